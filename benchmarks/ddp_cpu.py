"""torchplug ``ddp_cpu`` against a hand-written torchrun DDP loop: same model, data, global batch, 2 processes.

    python benchmarks/ddp_cpu.py                   # both, 3 rounds each, prints a Markdown table
    python benchmarks/ddp_cpu.py --rounds 5 --steps 300

Measured per run, from outside: the whole-process wall time of the command (``torchrun ... handwritten`` versus
``python ... torchplug``), and the time from starting the command to the first optimizer step (each worker
writes a timestamp at its first step; the earliest rank-0 stamp is used). Runs alternate so that machine load
hits both alike; the table gives medians.
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

FEATURES, HIDDEN, SAMPLES, GLOBAL_BATCH = 64, 256, 8192, 128


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))


def make_data() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, FEATURES, generator=generator)
    return torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True).sin())


def stamp_first_step(out: str, rank: int) -> None:
    with open(os.path.join(out, f"first_step_rank{rank}"), "w") as fh:
        fh.write(repr(time.time()))


# ---------------------------------------------------------------------------------------------- hand-written
def handwritten(steps: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = make_data()
    sampler = DistributedSampler(data, world, rank, shuffle=False)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world, sampler=sampler)
    done, epoch = 0, 0
    while done < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if done == 0:
                stamp_first_step(out, rank)
            done += 1
            if done == steps:
                break
        epoch += 1
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- torchplug
def with_torchplug(steps: int, out: str) -> None:
    from torch.utils.data import DataLoader

    from torchplug import Module, Trainer

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def training_step(self, batch, batch_idx):
            if self.global_step == 0:
                stamp_first_step(out, self.global_rank)
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    trainer = Trainer(strategy="ddp_cpu", devices=2, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Net(), DataLoader(make_data(), batch_size=GLOBAL_BATCH // 2))


# ---------------------------------------------------------------------------------------------- driver
def measure(kind: str, steps: int) -> tuple[float, float]:
    out = tempfile.mkdtemp(prefix="ddp-bench-")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    me = os.path.abspath(__file__)
    if kind == "handwritten":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", me,
                   "--role", kind, "--steps", str(steps), "--out", out]  # fmt: skip
    else:
        command = [sys.executable, me, "--role", kind, "--steps", str(steps), "--out", out]
    start = time.time()
    done = subprocess.run(command, env={**env, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode != 0:
        # torch 2.13 + gloo sometimes aborts a process at interpreter exit, after the work (docs/ddp.md); count
        # the run, but say so
        print(f"note: {kind} exited with {done.returncode}: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    wall = time.time() - start
    with open(os.path.join(out, "first_step_rank0")) as fh:
        first = float(fh.read()) - start
    return wall, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["handwritten", "torchplug"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.role == "handwritten":
        return handwritten(args.steps, args.out)
    if args.role == "torchplug":
        return with_torchplug(args.steps, args.out)
    results: dict[str, list[tuple[float, float]]] = {"handwritten": [], "torchplug": []}
    for _ in range(args.rounds):
        for kind in results:
            results[kind].append(measure(kind, args.steps))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(f for _, f in v)) for k, v in results.items()}
    print(f"2 processes, gloo, {args.steps} steps, global batch {GLOBAL_BATCH}, MLP {FEATURES}-{HIDDEN}-{HIDDEN}-1, "
          f"{args.rounds} rounds (medians), torch {torch.__version__}, {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| run | whole-process wall time (s) | command to first step (s) |")
    print("|---|---|---|")
    for kind, (wall, first) in med.items():
        print(f"| {kind} | {wall:.2f} | {first:.2f} |")
    ratio = med["torchplug"][0] / med["handwritten"][0]
    print(f"\nwall-time ratio torchplug / hand-written: {ratio:.3f} (target <= 1.05)")
    print(json.dumps({"raw": results}))


if __name__ == "__main__":
    main()
