"""Step time and peak memory of each precision on a stack of transformer blocks, trained through the Trainer.

    python benchmarks/precision.py                       # CPU: 32-true, 16-mixed, bf16-mixed
    python benchmarks/precision.py --accelerator gpu     # CUDA, a size that fills the chip; apex O1/O2 if importable

Each precision runs in a fresh process (apex allows one amp.initialize per process, and peak memory is then that
run's own). Step time is the median of the timed optimizer steps after the warm-up ones, measured between
``on_train_batch_start`` and ``on_train_batch_end`` (with a CUDA synchronize on the GPU), so it includes every
precision hook. Peak memory is ``torch.cuda.max_memory_allocated`` on the GPU; on the CPU it is the process's
resident-memory high-water mark during ``fit`` above its resident memory just before (Linux ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

SIZES = {
    # d_model, heads, layers, sequence length, batch size, vocabulary
    "small": dict(d_model=128, heads=4, layers=2, seq=64, batch=8, vocab=1024),
    "large": dict(d_model=2048, heads=16, layers=8, seq=1024, batch=8, vocab=32768),
}
CONFIGS = {
    "32-true": {"precision": "32-true"},
    "16-mixed": {"precision": "16-mixed"},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "apex O1": {"precision": "apex", "amp_level": "O1"},
    "apex O2": {"precision": "apex", "amp_level": "O2"},
}


def _worker(name: str, accelerator: str, size: dict[str, int], warmup: int, steps: int) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from torchplug import Callback, Module, Trainer

    class Blocks(Module):
        def __init__(self) -> None:
            super().__init__()
            d = size["d_model"]
            self.embed = nn.Embedding(size["vocab"], d)
            layer = nn.TransformerEncoderLayer(
                d, size["heads"], 4 * d, dropout=0.0, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, size["layers"], enable_nested_tensor=False)
            self.head = nn.Linear(d, size["vocab"])

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.embed(tokens), is_causal=False))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            tokens, targets = batch
            logits = self(tokens)
            return nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []

        def _sync(self) -> None:
            if accelerator == "gpu":
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._sync()
            self.start = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self._sync()
            self.times.append(time.perf_counter() - self.start)
            self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    torch.manual_seed(0)
    n = (warmup + steps) * size["batch"]
    tokens = torch.randint(0, size["vocab"], (n, size["seq"]))
    loader = DataLoader(TensorDataset(tokens, tokens.roll(-1, dims=1)), batch_size=size["batch"])
    model = Blocks()
    timer = StepTimer()
    options = dict(CONFIGS[name])
    trainer = Trainer(
        accelerator=accelerator, devices=1, max_steps=warmup + steps, callbacks=[timer], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        **options,
    )  # fmt: skip
    rss_before = _reset_cpu_peak() if accelerator == "cpu" else 0
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, loader)
    if accelerator == "gpu":
        peak = torch.cuda.max_memory_allocated()
        device = torch.cuda.get_device_name()
    else:
        peak = _cpu_peak() - rss_before
        device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "name": name,
        "step_ms": 1000 * statistics.median(timer.times[warmup:]),
        "peak_mib": peak / 2**20,
        "first_loss": timer.losses[0],
        "last_loss": timer.losses[-1],
        "device": device,
        "torch": torch.__version__,
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_cpu_peak() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the resident high-water mark
    return _status_kib("VmRSS") * 1024


def _cpu_peak() -> int:
    return _status_kib("VmHWM") * 1024


def _available(name: str, accelerator: str) -> str:
    """Why ``name`` cannot run here, or ``""``."""
    if not name.startswith("apex"):
        return ""
    if accelerator != "gpu":
        return "apex amp runs only on CUDA"
    try:
        from torchplug_apex import find_amp
    except ImportError:
        return "torchplug-apex is not installed"
    return find_amp()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--size", choices=sorted(SIZES), help="model size (default: small on cpu, large on gpu)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES[args.size or ("large" if args.accelerator == "gpu" else "small")]
    if args.worker:
        print(json.dumps(_worker(args.worker, args.accelerator, size, args.warmup, args.steps)))
        return

    print(
        f"transformer blocks {size}, {args.warmup} warm-up + {args.steps} timed steps, accelerator={args.accelerator}"
    )
    rows = []
    for name in args.configs:
        why = _available(name, args.accelerator)
        if why:
            print(f"  {name}: skipped ({why})")
            continue
        command = [sys.executable, __file__, "--worker", name, "--accelerator", args.accelerator,
                   "--size", args.size or ("large" if args.accelerator == "gpu" else "small"),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        if done.returncode:
            print(f"  {name}: failed\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {name}: {rows[-1]['step_ms']:.1f} ms/step, peak {rows[-1]['peak_mib']:.0f} MiB")
    if not rows:
        return
    base = next((r for r in rows if r["name"] == "32-true"), None)
    print(f"\ndevice: {rows[0]['device']}, torch {rows[0]['torch']}\n")
    print(
        "| precision | step time (ms) | speed vs 32-true | peak memory (MiB) | memory vs 32-true | loss first → last |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        speed = f"{base['step_ms'] / r['step_ms']:.2f}×" if base else "–"
        memory = f"{r['peak_mib'] / base['peak_mib']:.2f}×" if base and base["peak_mib"] > 0 else "–"
        print(
            f"| {r['name']} | {r['step_ms']:.1f} | {speed} | {r['peak_mib']:.0f} | {memory} | "
            f"{r['first_loss']:.3f} → {r['last_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
