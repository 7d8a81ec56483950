"""Runs that need a fresh process (several CPU devices, SPMD mode, a spawned replica); see test_xla_processes.py.

Usage: python xla_runs.py MODE OUT.json, with PJRT_DEVICE and CPU_NUM_DEVICES set by the caller.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from xla_models import PidRegressor, Regressor, SpawningXLAStrategy, loader, trainer

import torchplug


class ShardRecorder(Regressor):
    def training_step(self, batch, batch_idx):
        import torch_xla

        self.seen.setdefault("input_sharding", torch_xla._XLAC._get_xla_sharding_spec(batch[0]))
        return super().training_step(batch, batch_idx)


def weights(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().cpu().flatten() for p in model.parameters()]).tolist()


def main(mode: str, out: str) -> None:
    import torch_xla.debug.metrics as met

    report: dict[str, object] = {"pid": os.getpid()}
    torchplug.seed_everything(0)
    if mode == "spawn":
        model = PidRegressor()
        before = weights(model)
        run = trainer(strategy=SpawningXLAStrategy(), max_epochs=2)
        run.fit(model, loader(), loader(64))
        report.update(
            weights_changed=weights(model) != before,
            global_step=run.global_step,
            current_epoch=run.current_epoch,
            fit_pid=float(run.callback_metrics["pid"]),
            val_loss=float(run.callback_metrics["val_loss"]),
        )
    else:
        model = ShardRecorder()
        strategy, devices = ("xla_spmd", "auto") if mode == "spmd" else ("single_xla", [1])
        # batch 30 does not split evenly over 4 devices: XLA pads the shards
        run = trainer(strategy=strategy, devices=devices, max_epochs=3, log_every_n_steps=100)
        run.fit(model, loader(batch_size=30), loader(60, batch_size=30))
        report.update(
            device_ids=run.device_ids,
            root_device=str(run.root_device),
            seen={k: str(v) for k, v in model.seen.items()},
            losses=[float(v) for v in model.losses],
            weights=weights(model),
            val_loss=float(run.callback_metrics["val_loss"]),
            compilations=met.metric_data("CompileTime")[0],
        )
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
