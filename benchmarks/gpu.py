"""Per-step time on one GPU: torchplug against a hand-written CUDA loop and against Lightning, and AMP's speedup.

    python benchmarks/gpu.py                          # needs CUDA; the "large" model fills an 80 GB GPU
    python benchmarks/gpu.py --size small --steps 30  # a quicker look
    python benchmarks/gpu.py --json results.json      # also write the rows as JSON

The same small transformer (token embedding, pre-norm encoder blocks, vocabulary head, AdamW) trains on the same
random tokens from a pinned-memory DataLoader in every loop:

* ``hand-written``: ``.to(device, non_blocking=True)``, forward, ``backward``, ``step``, ``zero_grad``, reading the
  loss to the host every ``--log-every`` steps (what torchplug's logging interval does);
* ``torchplug``: ``Trainer(accelerator="gpu", devices=1)`` with loggers, checkpoints, progress bar and summary off,
  ``self.log("loss", loss)`` in ``training_step`` and ``log_every_n_steps=--log-every``;
* ``lightning``: the same LightningModule code on ``lightning`` (or ``pytorch_lightning``) when importable;
* each again under AMP: ``torch.autocast`` + ``GradScaler`` (fp16) and bf16 by hand, ``precision="16-mixed"`` and
  ``"bf16-mixed"`` through torchplug-amp and Lightning.

Each loop runs in its own process. The time of a loop is the wall time of its timed steps after the warm-up ones,
between two ``torch.cuda.synchronize()`` calls, divided by the number of steps: no synchronisation in between,
so the GPU's queue is never drained artificially. The target for torchplug is at most 1.02× the hand-written time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

SIZES = {
    # d_model, heads, layers, sequence length, batch size, vocabulary
    "large": dict(d_model=1024, heads=16, layers=8, seq=1024, batch=32, vocab=32768),
    "small": dict(d_model=512, heads=8, layers=4, seq=512, batch=32, vocab=8192),
    "tiny": dict(d_model=32, heads=2, layers=1, seq=16, batch=4, vocab=64),  # --cpu-dry-run only
}
LOOPS = ["hand-written", "torchplug", "lightning"]
PRECISIONS = ["32-true", "16-mixed", "bf16-mixed"]


def _lightning() -> Any:
    try:
        import lightning.pytorch as lightning
    except ImportError:
        try:
            import pytorch_lightning as lightning
        except ImportError:
            return None
    return lightning


def _why_not(loop: str, precision: str, device: str) -> str:
    """Why this combination cannot run here, or ``""``."""
    if loop == "lightning" and _lightning() is None:
        return "neither lightning nor pytorch_lightning is installed"
    if loop == "torchplug" and precision != "32-true":
        try:
            import torchplug_amp  # noqa: F401
        except ImportError:
            return "torchplug-amp is not installed"
    if precision == "bf16-mixed" and device == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16"
    if precision == "16-mixed" and device == "cpu":
        return "fp16 autocast is a GPU measurement"
    return ""


def _worker(loop: str, precision: str, size: dict[str, int], warmup: int, steps: int, log_every: int, device: str) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    d = size["d_model"]

    def network() -> nn.Module:
        layer = nn.TransformerEncoderLayer(d, size["heads"], 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        return nn.ModuleDict({
            "embed": nn.Embedding(size["vocab"], d),
            "blocks": nn.TransformerEncoder(layer, size["layers"], enable_nested_tensor=False),
            "head": nn.Linear(d, size["vocab"]),
        })  # fmt: skip

    def loss_of(net: nn.Module, batch: Any) -> torch.Tensor:
        tokens, targets = batch
        logits = net["head"](net["blocks"](net["embed"](tokens)))
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    total = warmup + steps
    tokens = torch.randint(0, size["vocab"], (total * size["batch"], size["seq"]))
    loader = DataLoader(TensorDataset(tokens, tokens.roll(-1, dims=1)), batch_size=size["batch"],
                        pin_memory=device == "cuda")  # fmt: skip
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock: dict[str, float] = {}
    losses: list[float] = []

    if loop == "hand-written":
        net = network().to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
        scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
        for i, batch in enumerate(loader):
            if i == warmup:
                sync()
                clock["start"] = time.perf_counter()
            batch = [t.to(device, non_blocking=True) for t in batch]
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_of(net, batch)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if (i + 1) % log_every == 0:
                losses.append(float(loss))
        sync()
        clock["end"] = time.perf_counter()
    else:
        if loop == "torchplug":
            import torchplug as framework

            base, callback_base, trainer_options = framework.Module, framework.Callback, {"accelerator": "gpu" if device == "cuda" else "cpu"}
        else:
            framework = _lightning()
            base, callback_base, trainer_options = framework.LightningModule, framework.Callback, {"accelerator": "gpu" if device == "cuda" else "cpu"}

        class Blocks(base):  # type: ignore[misc,valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.net = network()

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                loss = loss_of(self.net, batch)
                self.log("loss", loss)
                return loss

            def configure_optimizers(self) -> Any:
                return torch.optim.AdamW(self.parameters(), lr=1e-4)

        class Clock(callback_base):  # type: ignore[misc,valid-type]
            def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
                if batch_idx == warmup:
                    sync()
                    clock["start"] = time.perf_counter()

            def on_train_end(self, trainer: Any, module: Any) -> None:
                sync()
                clock["end"] = time.perf_counter()
                losses.append(float(trainer.callback_metrics["loss"]))

        trainer = framework.Trainer(
            devices=1, precision=precision, max_steps=total, max_epochs=1, log_every_n_steps=log_every,
            callbacks=[Clock()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, **trainer_options,
        )  # fmt: skip
        trainer.fit(Blocks(), loader)
    return {
        "loop": loop,
        "precision": precision,
        "step_ms": 1000 * (clock["end"] - clock["start"]) / steps,
        "last_loss": losses[-1] if losses else float("nan"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["large", "small"], default="large")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=50, help="logging interval (loss read to the host)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop; the median is reported")
    parser.add_argument("--loops", nargs="+", default=LOOPS, choices=LOOPS)
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run a tiny model on the CPU to check this script itself; the numbers mean nothing")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cpu" if args.cpu_dry_run else "cuda"
    size_name = "tiny" if args.cpu_dry_run else args.size
    size = SIZES[size_name]

    if args.worker:
        loop, precision = args.worker
        print(json.dumps(_worker(loop, precision, size, args.warmup, args.steps, args.log_every, device)))
        return

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        sys.exit(
            f"benchmarks/gpu.py measures training on a CUDA GPU, and this machine has none visible "
            f"(torch.cuda.is_available() is False; torch {torch.__version__} is {build}). Nothing was measured. "
            "Run it on a machine with an NVIDIA GPU; --cpu-dry-run only checks that the script works."
        )

    print(f"transformer {size_name} {size}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"median of {args.repeats} runs, log every {args.log_every} steps")  # fmt: skip
    rows = []
    for precision in args.precisions:
        for loop in args.loops:
            why = _why_not(loop, precision, device)
            if why:
                print(f"  {loop:<12} {precision:<10} skipped: {why}")
                continue
            runs = []
            for _ in range(args.repeats):
                command = [sys.executable, __file__, "--worker", loop, precision, "--size", args.size,
                           "--warmup", str(args.warmup), "--steps", str(args.steps), "--log-every", str(args.log_every)]  # fmt: skip
                if args.cpu_dry_run:
                    command.append("--cpu-dry-run")
                done = subprocess.run(command, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
                if done.returncode:
                    print(f"  {loop:<12} {precision:<10} failed:\n{done.stderr[-3000:]}")
                    break
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                row = dict(runs[0], step_ms=statistics.median(r["step_ms"] for r in runs),
                           spread_ms=max(r["step_ms"] for r in runs) - min(r["step_ms"] for r in runs))  # fmt: skip
                rows.append(row)
                print(f"  {loop:<12} {precision:<10} {row['step_ms']:8.2f} ms/step (spread {row['spread_ms']:.2f})")
    if not rows:
        sys.exit("no loop could run")
    _report(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _report(rows: list[dict[str, Any]]) -> None:
    def find(loop: str, precision: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["loop"] == loop and r["precision"] == precision), None)

    print(f"\ndevice: {rows[0]['device']}, torch {rows[0]['torch']}\n")
    print("| precision | loop | step time (ms) | vs hand-written | AMP speedup vs its 32-true |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        hand = find("hand-written", r["precision"])
        fp32 = find(r["loop"], "32-true")
        ratio = f"{r['step_ms'] / hand['step_ms']:.3f}×" if hand else "–"
        speedup = f"{fp32['step_ms'] / r['step_ms']:.2f}×" if fp32 and r["precision"] != "32-true" else "–"
        print(f"| {r['precision']} | {r['loop']} | {r['step_ms']:.2f} | {ratio} | {speedup} |")


if __name__ == "__main__":
    main()
