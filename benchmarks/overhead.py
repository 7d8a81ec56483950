"""Per-step overhead of torchplug (and Lightning, when installed) against a hand-written PyTorch loop.

The same tiny MLP (32→32→1, batch 32, SGD) is trained for ``--steps`` steps on one thread, in one process, by each
contender in turn, ``--repeats`` times interleaved; the script prints the median CPU time per step (of the training
thread, so a busy machine disturbs it less than wall time) and the ratio to the plain loop. Run it as::

    .venv/bin/python benchmarks/overhead.py            # as in docs/benchmarks.md
    .venv/bin/python benchmarks/overhead.py --steps 500 --repeats 3   # quicker

It also measures how long ``import torchplug`` plus constructing a ``Trainer`` adds to ``import torch``, each in a
fresh interpreter.

Timing needs an idle machine. ``--instructions`` counts instead: each contender runs under valgrind's callgrind
(Debian package ``valgrind``), which counts the instructions the process executes, whatever else the machine does.
The count covers a ``fit`` of N steps and one of 2N steps, and the per-step figure is their difference divided by
N, so setup and the measurement's own cost cancel out::

    .venv/bin/python benchmarks/overhead.py --instructions --steps 200   # about 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug

# CPU time of this thread: torch runs on one thread here, so this is the loop's own cost, and other processes on a
# shared machine do not inflate it the way they inflate wall time.
_clock = time.thread_time


def make_data(steps: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 32, 32, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=32)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def plain(loader: DataLoader) -> float:
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    start = _clock()
    for x, y in loader:
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return _clock() - start


class TorchplugNet(torchplug.Module):
    def __init__(self, log: bool) -> None:
        super().__init__()
        self.net, self.do_log = make_net(), log

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.do_log:
            self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _Timer(torchplug.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = _clock()

    def on_train_end(self, trainer, pl_module):
        self.elapsed = _clock() - self.start


def with_torchplug(loader: DataLoader, log: bool) -> float:
    timer = _Timer()
    trainer = torchplug.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(TorchplugNet(log), loader)
    return timer.elapsed


def with_lightning(loader: DataLoader, log: bool) -> float | None:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None

    class LightningNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            if log:
                self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Timer(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = _clock()

        def on_train_end(self, trainer, pl_module):
            self.elapsed = _clock() - self.start

    timer = Timer()
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer], accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(LightningNet(), loader)
    return timer.elapsed


def import_cost(repeats: int) -> tuple[float, float]:
    """Median seconds for ``import torch`` alone and for ``import torch, torchplug`` + ``Trainer()``."""
    base = "import time; t=time.perf_counter(); import torch; "
    ours = base + "import torchplug; torchplug.Trainer(logger=False, enable_checkpointing=False); "
    end = "print(time.perf_counter()-t)"
    times: dict[str, list[float]] = {"torch": [], "torchplug": []}
    for _ in range(repeats):
        for key, code in (("torch", base + end), ("torchplug", ours + end)):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times[key].append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times["torch"]), statistics.median(times["torchplug"])


CONTENDERS = {
    "plain PyTorch loop": plain,
    "torchplug": lambda loader: with_torchplug(loader, log=False),
    "torchplug + self.log": lambda loader: with_torchplug(loader, log=True),
    "Lightning": lambda loader: with_lightning(loader, log=False),
    "Lightning + self.log": lambda loader: with_lightning(loader, log=True),
}


def _instructions_so_far() -> int:
    """Instructions callgrind has counted in this process (every thread), while instrumentation is on."""
    out = subprocess.run(["callgrind_control", "-e", str(os.getpid())], capture_output=True, text=True, check=True)
    return sum(int(n.replace(",", "")) for n in re.findall(r"Th\s+\d+\s+([\d,]+)", out.stdout))


def count_instructions(name: str, steps: int) -> None:
    """Run inside callgrind: print the instructions per training step of one contender (as JSON)."""
    run = CONTENDERS[name]
    short, long = make_data(steps), make_data(2 * steps)
    if run(short) is None:  # warm-up, not counted; None: not installed
        print(json.dumps({"per_step": None}))
        return
    subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True, check=True)
    start = _instructions_so_far()
    run(short)
    middle = _instructions_so_far()
    run(long)
    end = _instructions_so_far()
    print(json.dumps({"per_step": ((end - middle) - (middle - start)) / steps}))


def instructions(steps: int) -> None:
    results = {}
    for name in CONTENDERS:
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null", "-q",
            sys.executable, __file__, "--count", name, "--steps", str(steps),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])["per_step"]
    base = results["plain PyTorch loop"]
    print(f"torch {torch.__version__}, torchplug {torchplug.__version__}, instructions per step (callgrind), "
          f"N={steps}")  # fmt: skip
    print(f"{'contender':<24} {'instructions/step':>18} {'ratio':>7}")
    for name, value in results.items():
        if value is None:
            print(f"{name:<24} {'(not installed)':>18}")
        else:
            print(f"{name:<24} {value:>18,.0f} {value / base:>6.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-import", action="store_true", help="skip the import-time measurement")
    parser.add_argument("--instructions", action="store_true", help="count instructions per step with callgrind")
    parser.add_argument("--count", metavar="CONTENDER", help=argparse.SUPPRESS)  # one contender, inside valgrind
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("torchplug").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    if args.count:
        count_instructions(args.count, args.steps)
        return
    if args.instructions:
        instructions(args.steps)
        return

    loader = make_data(args.steps)
    contenders = {name: (lambda run=run: run(loader)) for name, run in CONTENDERS.items()}
    for run in contenders.values():  # warm-up: first-call costs (allocator, imports) out of the figures
        run()
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            elapsed = run()
            if elapsed is not None:
                results[name].append(elapsed / args.steps)
    base = statistics.median(results["plain PyTorch loop"])
    print(f"torch {torch.__version__}, torchplug {torchplug.__version__}, {args.steps} steps x {args.repeats} repeats")
    print(f"{'contender':<24} {'median µs/step':>15} {'ratio':>7}")
    for name, values in results.items():
        if not values:
            print(f"{name:<24} {'(not installed)':>15}")
            continue
        median = statistics.median(values)
        print(f"{name:<24} {median * 1e6:>15.1f} {median / base:>6.3f}x")
    if not args.no_import:
        torch_s, ours_s = import_cost(5)
        print(f"import torch: {torch_s:.3f} s; + import torchplug + Trainer(): {ours_s:.3f} s (+{ours_s - torch_s:.3f} s)")


if __name__ == "__main__":
    main()
