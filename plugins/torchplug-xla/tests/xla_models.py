"""Small modules and data shared by the XLA tests, in-process and in the subprocesses of ``xla_runs.py``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import hookimpl
from torchplug_xla import XLAStrategy, _launch


def regression_data(n: int = 256, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(32, 1, generator=generator)  # drawn first: every n shares the same target function
    x = torch.randn(n, 32, generator=generator)
    y = x @ w
    return TensorDataset(x, y)


def loader(n: int = 256, batch_size: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(regression_data(n), batch_size=batch_size, shuffle=shuffle, drop_last=True)


class Regressor(torchplug.Module):
    """32 -> 64 -> 1 MLP; records what the hooks see so tests can check device and precision from inside."""

    def __init__(self, lr: float = 0.05, optimizer: str = "sgd") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))
        self.seen: dict[str, object] = {}
        self.losses: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        self.seen["fit_start_device"] = str(self.device)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.seen.setdefault("train_input_device", str(x.device))
        self.seen.setdefault("train_step_device", str(self.device))
        self.seen.setdefault("autocast", torch.is_autocast_enabled("xla"))
        self.seen.setdefault("activation_dtype", out.dtype)
        loss = nn.functional.mse_loss(out.float(), y)
        self.losses.append(loss.detach())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x).float(), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x).float(), y), sync_dist=True)
        self.log("test_max_abs_err", (self(x).float() - y).abs().max(), reduce_fx="max", sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        if self.hparams["optimizer"] == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"] / 10)
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def trainer(**options) -> torchplug.Trainer:
    """A quiet trainer on the XLA device; options override."""
    defaults = dict(
        accelerator="tpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=4,
    )  # fmt: skip
    defaults.update(options)
    return torchplug.Trainer(**defaults)


class PidRegressor(Regressor):
    """Also logs the id of the process that validates, to show where a run happened."""

    def validation_step(self, batch, batch_idx):
        import os

        super().validation_step(batch, batch_idx)
        self.log("pid", float(os.getpid()))


class SpawningXLAStrategy(XLAStrategy):
    """Stand-in: ``strategy="xla"`` forced through its multi-process launcher although this host has one device.

    On the XLA CPU device ``xmp.spawn`` of several replicas deadlocks in collectives, and with one device the
    strategy runs in-process; this subclass starts the single replica in a child process exactly as the
    several-device path does, so pickling, the child's trainer and the return of replica 0's state are real.
    """

    @hookimpl
    def torchplug_launch(self, trainer, function):
        return (_launch.spawn(function, nprocs=None, start_method=self.start_method),)
