"""torchplug on an XLA device against hand-written torch_xla loops: step time, steps per second, compile time.

All contenders train the same MLP (512→1024→1024→10, batch 256, SGD, cross-entropy) on the same CPU-held batches
and read the loss to the host every ``--log-every`` steps:

* ``hand-written torch_xla``: ``.to(device)`` per tensor, forward, backward, step, ``zero_grad``, ``torch_xla.sync()``;
* ``hand-written MpDeviceLoader``: PyTorch/XLA's documented loop (``MpDeviceLoader`` transfers batches in a
  background thread and cuts the graph at each fetch; ``zero_grad`` first, ``xm.optimizer_step``);
* ``torchplug single_xla``: ``Trainer(accelerator="tpu", strategy="single_xla")``, ``self.log`` with
  ``log_every_n_steps``; loggers, checkpoints, progress bar and summary off.

Each contender runs in a fresh process, so none finds graphs another compiled; runs alternate ``--repeats`` times
and the medians are shown; ratios are to the first contender.

Step time is the wall time of the steps after ``--warmup`` steps, waiting for the device at both ends; compile time
is torch_xla's ``CompileTime`` metric summed over the run; ``compilations`` counts its samples (1 means every step
reused the first step's graph). Needs ``.venv-xla`` (torch and torch-xla 2.9.0)::

    PJRT_DEVICE=CPU .venv-xla/bin/python benchmarks/xla.py                  # as in docs/benchmarks.md
    PJRT_DEVICE=CPU .venv-xla/bin/python benchmarks/xla.py --steps 100 --repeats 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH = 256


def make_data(steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, 512, generator=generator)
    y = torch.randint(0, 10, (steps * BATCH,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def compile_metrics() -> tuple[int, float]:
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return (int(data[0]), data[1] / 1e9) if data else (0, 0.0)


def hand_written(steps: int, warmup: int, log_every: int) -> dict[str, float]:
    import torch_xla
    import torch_xla.core.xla_model as xm

    device = torch_xla.device()
    net = make_net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = make_data(steps)
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader, start=1):
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch_xla.sync()
        if step % log_every == 0:
            float(loss)
        if step == warmup:
            xm.wait_device_ops()
            steady = time.perf_counter()
    xm.wait_device_ops()
    end = time.perf_counter()
    count, seconds = compile_metrics()
    return {
        "total": end - start,
        "steady": (end - steady) / (steps - warmup),
        "compile": seconds,
        "compilations": count,
    }


def hand_written_mp_loader(steps: int, warmup: int, log_every: int) -> dict[str, float]:
    """PyTorch/XLA's documented loop: ``MpDeviceLoader`` (background transfers, a graph cut per batch fetched)
    and ``xm.optimizer_step``."""
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.distributed.parallel_loader as pl

    device = torch_xla.device()
    net = make_net().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = pl.MpDeviceLoader(make_data(steps), device)
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader, start=1):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        xm.optimizer_step(opt)
        if step % log_every == 0:
            float(loss)
        if step == warmup:
            xm.wait_device_ops()
            steady = time.perf_counter()
    xm.wait_device_ops()
    end = time.perf_counter()
    count, seconds = compile_metrics()
    return {
        "total": end - start,
        "steady": (end - steady) / (steps - warmup),
        "compile": seconds,
        "compilations": count,
    }


def with_torchplug(steps: int, warmup: int, log_every: int) -> dict[str, float]:
    import torch_xla.core.xla_model as xm

    import torchplug

    class Net(torchplug.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(torchplug.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == warmup:
                xm.wait_device_ops()
                self.steady = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            xm.wait_device_ops()
            self.end = time.perf_counter()

    clock = Clock()
    trainer = torchplug.Trainer(
        accelerator="tpu", strategy="single_xla", devices=1, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=log_every, callbacks=[clock],
    )  # fmt: skip
    loader = make_data(steps)
    start = time.perf_counter()
    trainer.fit(Net(), loader)
    count, seconds = compile_metrics()
    return {
        "total": clock.end - start, "steady": (clock.end - clock.steady) / (steps - warmup), "compile": seconds,
        "compilations": count,
    }  # fmt: skip


CONTENDERS = {
    "hand-written torch_xla": hand_written,
    "hand-written MpDeviceLoader": hand_written_mp_loader,
    "torchplug single_xla": with_torchplug,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one contender, in a child process
    args = parser.parse_args()
    if args.run:
        torch.set_num_threads(1)  # host-side work on one thread, as each contender gets the same
        print(json.dumps(CONTENDERS[args.run](args.steps, args.warmup, args.log_every)))
        return

    env = {**os.environ, "PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeats):
        for name in CONTENDERS:
            command = [sys.executable, __file__, "--run", name, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--log-every", str(args.log_every)]  # fmt: skip
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))

    import torch_xla

    print(f"torch {torch.__version__}, torch-xla {torch_xla.__version__}, PJRT_DEVICE={env['PJRT_DEVICE']}, "
          f"{args.steps} steps ({args.warmup} warm-up), batch {BATCH}, loss read every {args.log_every} steps, "
          f"{args.repeats} runs each, medians")  # fmt: skip
    base = statistics.median(r["steady"] for r in results["hand-written torch_xla"])
    print(
        f"{'contender':<28} {'step ms':>8} {'steps/s':>8} {'vs hand':>8} {'compile s':>10} {'compilations':>13}"
    )
    for name, runs in results.items():
        steady = statistics.median(r["steady"] for r in runs)
        compile_s = statistics.median(r["compile"] for r in runs)
        compilations = sorted({r["compilations"] for r in runs})
        print(f"{name:<28} {steady * 1e3:>8.2f} {1 / steady:>8.1f} {steady / base:>7.3f}x {compile_s:>10.3f} "
              f"{'/'.join(map(str, compilations)):>13}")  # fmt: skip
    for name, runs in results.items():
        print(f"  {name} step ms per run: " + ", ".join(f"{r['steady'] * 1e3:.2f}" for r in runs))


if __name__ == "__main__":
    main()
