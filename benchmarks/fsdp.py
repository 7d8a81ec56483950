"""torchplug ``fsdp`` against torchplug ``ddp`` (memory) and a hand-written FSDP2 loop (step time), 2 processes.

    python benchmarks/fsdp.py                          # 3 rounds, default glibc malloc
    python benchmarks/fsdp.py --rounds 3 --mmap-threshold 65536   # glibc returns freed buffers to the OS

Model: 12 residual blocks of Linear(2048, 2048) and a head (50.4M parameters, 192 MiB in float32), Adam, global
batch 16 (8 per process), float32, on the CPU with gloo and one thread per process unless CUDA is asked for
(``--accelerator gpu``). Contenders, each in fresh processes, interleaved round by round:

* ``torchplug ddp``: ``Trainer(strategy="ddp", devices=2)``;
* ``torchplug fsdp``: ``Trainer(strategy="fsdp", devices=2, auto_wrap_policy={Block})``;
* ``hand-written FSDP2``: ``torchrun`` running ``fully_shard`` on each block and the root, Adam over the shards,
  a ``DistributedSampler`` loop.

Per process: the step time (first to last instruction of a training step: forward, backward, optimizer step; 2
warm-up steps, then the median of the timed ones) and the CPU time the process (all its threads, gloo's included)
spent in it, which other jobs on a shared machine disturb less than wall time, the bytes of parameters, gradients and optimizer state it holds
(its shards for FSDP), and its resident-memory high-water mark while training (``VmHWM`` after writing 5 to
``/proc/self/clear_refs`` when training starts, minus nothing: the whole process) and over its whole life (model
construction included). The table gives medians over rounds and the spread (min-max); a rank's figure is the
larger of the two ranks'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

WIDTH, BLOCKS, GLOBAL_BATCH, SAMPLES = 2048, 12, 16, 256


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.lin(x))


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, WIDTH, generator=generator)
    return torch.utils.data.TensorDataset(x, x.mean(dim=1, keepdim=True))


# ---------------------------------------------------------------------------------------------- measuring
def status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for entry in optimizer.state.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor):
                total += local(value).numel() * value.element_size()
    return total


class Probe:
    """Step times and memory of one process; ``step_start``/``step_end`` bracket a training step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.cpu_times, self.start, self.cpu_start = warmup, [], [], 0.0, 0.0
        self.life_peak_before_training = 0

    def training_starts(self) -> None:
        self.life_peak_before_training = status("VmHWM")
        reset_peak()

    def step_start(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def step_end(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.times.append(time.perf_counter() - self.start)
        self.cpu_times.append(time.process_time() - self.cpu_start)

    def write(self, out: str, rank: int, held: int, device: torch.device) -> None:
        timed = self.times[self.warmup :]
        report = {
            "step_s": statistics.median(timed),
            "step_cpu_s": statistics.median(self.cpu_times[self.warmup :]),
            "held_bytes": held,
            "train_peak_rss": status("VmHWM"),
            "life_peak_rss": max(self.life_peak_before_training, status("VmHWM")),
        }
        if device.type == "cuda":
            report["cuda_peak"] = torch.cuda.max_memory_allocated(device)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump(report, fh)


# ---------------------------------------------------------------------------------------------- contenders
def handwritten(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, DistributedSampler

    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if args.accelerator == "gpu" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = Body().to(device)
    mesh = init_device_mesh(device.type, (world,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = make_data()
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=DistributedSampler(data, world, rank, shuffle=False))
    probe = Probe(args.warmup)
    probe.training_starts()
    for step, (x, y) in enumerate(loader):
        if step == args.warmup + args.steps:
            break
        x, y = x.to(device), y.to(device)  # torchplug's steps start after its to_device too
        probe.step_start(device)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        probe.step_end(device)
    probe.write(args.out, rank, held_bytes(model, optimizer), device)
    dist.destroy_process_group()


def with_torchplug(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader

    from torchplug import Callback, Module, Trainer

    probe = Probe(args.warmup)

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = Body()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.body(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    class Measure(Callback):
        def on_train_start(self, trainer, module):
            probe.training_starts()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            probe.step_start(trainer.root_device)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            probe.step_end(trainer.root_device)

        def on_train_end(self, trainer, module):
            probe.write(args.out, trainer.global_rank, held_bytes(module, trainer.optimizers[0]), trainer.root_device)

    options = {"auto_wrap_policy": {Block}} if args.strategy == "fsdp" else {}
    torch.manual_seed(0)
    model = Net()
    trainer = Trainer(accelerator=args.accelerator, strategy=args.strategy, devices=2, max_steps=args.warmup + args.steps,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[Measure()], **options)  # fmt: skip
    trainer.fit(model, DataLoader(make_data(), batch_size=GLOBAL_BATCH // 2))


# ---------------------------------------------------------------------------------------------- driver
CONTENDERS = {"torchplug ddp": ("torchplug", "ddp"), "torchplug fsdp": ("torchplug", "fsdp"),
              "hand-written FSDP2": ("handwritten", "fsdp")}  # fmt: skip


def measure(name: str, args: argparse.Namespace) -> list[dict]:
    role, strategy = CONTENDERS[name]
    out = tempfile.mkdtemp(prefix="fsdp-bench-")
    me = os.path.abspath(__file__)
    common = ["--role", role, "--strategy", strategy, "--out", out, "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--accelerator", args.accelerator]  # fmt: skip
    if role == "handwritten":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", me, *common]
    else:
        command = [sys.executable, me, *common]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads))
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print(f"note: {name} exited with {done.returncode}: {done.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["handwritten", "torchplug"])
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--out")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--mmap-threshold", type=int, default=0, help="MALLOC_MMAP_THRESHOLD_ for every process")
    parser.add_argument("--json", help="also write every run's figures here")
    parser.add_argument("--only", nargs="+", choices=["ddp", "fsdp", "handwritten"], help="run only these contenders")
    args = parser.parse_args()
    if args.role == "handwritten":
        return handwritten(args)
    if args.role == "torchplug":
        return with_torchplug(args)

    keys = {"torchplug ddp": "ddp", "torchplug fsdp": "fsdp", "hand-written FSDP2": "handwritten"}
    runs: dict[str, list[list[dict]]] = {name: [] for name in CONTENDERS if not args.only or keys[name] in args.only}
    for _ in range(args.rounds):
        for name in runs:
            runs[name].append(measure(name, args))

    def per_run(name: str, key: str) -> list[float]:
        return [max(rank[key] for rank in ranks) for ranks in runs[name]]

    def cell(values: list[float], scale: float, fmt: str) -> str:
        values = [v / scale for v in values]
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    mib = 2**20
    device = "CUDA" if args.accelerator == "gpu" else f"CPU, gloo, OMP_NUM_THREADS={args.threads}"
    malloc = f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}" if args.mmap_threshold else "default glibc malloc"
    print(f"{device}, {malloc}; 50.4M parameters, Adam, global batch {GLOBAL_BATCH}, 2 processes; {args.rounds} rounds of "
          f"{args.warmup}+{args.steps} steps; torch {torch.__version__}, {os.cpu_count()} CPUs\n")  # fmt: skip
    memory = "peak CUDA memory (MiB)" if args.accelerator == "gpu" else "peak RSS while training (MiB)"
    print(f"| contender | step time (s) | step CPU time (s) | held: params+grads+Adam (MiB) | {memory} | peak RSS, "
          "whole process (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    peak_key = "cuda_peak" if args.accelerator == "gpu" else "train_peak_rss"
    for name in runs:
        print(f"| {name} | {cell(per_run(name, 'step_s'), 1, '.2f')} | {cell(per_run(name, 'step_cpu_s'), 1, '.2f')} | "
              f"{cell(per_run(name, 'held_bytes'), mib, '.0f')} | "
              f"{cell(per_run(name, peak_key), mib, '.0f')} | {cell(per_run(name, 'life_peak_rss'), mib, '.0f')} |")  # fmt: skip

    def ratios(a: str, b: str, key: str) -> list[float]:
        return [x / y for x, y in zip(per_run(a, key), per_run(b, key))]

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "runs": runs}, fh)
    if "torchplug fsdp" in runs and "torchplug ddp" in runs:
        memory_ratio = ratios("torchplug fsdp", "torchplug ddp", peak_key)
        held_ratio = ratios("torchplug fsdp", "torchplug ddp", "held_bytes")
        print(f"\npeak memory per rank, fsdp / ddp: {cell(memory_ratio, 1, '.2f')} (target <= 0.6); held state: "
              f"{cell(held_ratio, 1, '.2f')}")  # fmt: skip
    if "torchplug fsdp" in runs and "hand-written FSDP2" in runs:
        step_ratio = ratios("torchplug fsdp", "hand-written FSDP2", "step_s")
        cpu_ratio = ratios("torchplug fsdp", "hand-written FSDP2", "step_cpu_s")
        print(f"step time, torchplug fsdp / hand-written FSDP2: {cell(step_ratio, 1, '.3f')} (target <= 1.03); step "
              f"CPU time: {cell(cpu_ratio, 1, '.3f')}")  # fmt: skip


if __name__ == "__main__":
    main()
