"""Fixtures for a backend's own tests (re-exported by :mod:`torchplug.testing`, the pytest plugin).

``BoringModel`` is a tiny regression model with every step implemented; ``quiet_trainer_kwargs`` turn off what a
test rarely wants (progress bar, summary, loggers, checkpoints); ``clean_env`` restores ``os.environ`` afterwards;
``subprocess_env`` is the environment for a Python child process that must import what the test process imports.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchplug.module import Module


def regression_data(n: int = 64, features: int = 4, seed: int = 0) -> TensorDataset:
    """``y = x @ w`` with a fixed ``w``: a loss that must fall when training works."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator)
    w = torch.arange(1, features + 1, dtype=torch.float32).unsqueeze(1) / features
    return TensorDataset(x, x @ w)


def regression_loader(n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(regression_data(n, seed=seed), batch_size=batch_size, shuffle=shuffle)


class BoringModel(Module):
    """A linear regression with training, validation, test and predict steps and an SGD optimizer."""

    def __init__(self, features: int = 4, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr = lr
        self.layer = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("test_loss", self._loss(batch))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


@pytest.fixture
def quiet_trainer_kwargs(tmp_path: Any) -> dict[str, Any]:
    """Trainer arguments for a test: no progress bar, summary, logger or checkpoints; files under tmp_path."""
    return {**QUIET, "default_root_dir": str(tmp_path)}


@pytest.fixture
def clean_env() -> Iterator[None]:
    """Restore ``os.environ`` after the test (distributed tests set MASTER_ADDR, RANK, …) and destroy the process
    group the test left (a world of one run in the test process keeps its group, and its store's port, for the
    rest of the process, as in a user's script; a later test's child would inherit MASTER_PORT and find it taken)."""
    import torch.distributed as dist

    saved = dict(os.environ)
    had_group = dist.is_available() and dist.is_initialized()
    yield
    if not had_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def subprocess_env(*prepend: str | os.PathLike[str], **variables: str) -> dict[str, str]:
    """``os.environ`` for a child ``sys.executable`` that must import what this process imports, plus ``variables``.

    ``PYTHONPATH`` becomes the folders in ``prepend``, then every entry of this process's ``sys.path`` that the
    interpreter does not add by itself (the standard library and site-packages are left out): what ``PYTHONPATH``
    gave this process, and folders a test runner or the program inserted. So a torchplug found only that way (wheels
    installed with ``pip install --no-deps --target DIR`` and ``PYTHONPATH=DIR``, as on GPU clusters without
    network) is found in the child too. Relative entries are made absolute: the child may run elsewhere.
    """
    entries = [os.path.abspath(os.fspath(p)) for p in prepend]
    entries += [os.path.abspath(p) for p in sys.path if p and os.path.exists(p) and not _interpreters_own(p)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(entries)), **variables}


def distributed_variable(name: str) -> bool:
    """Whether environment variable ``name`` describes a job in progress, so a new job started by a test must not
    inherit it: set by torchrun, srun, torchplug's launcher (``TORCHPLUG_LAUNCHER_PID``, ``TORCHPLUG_ERROR_DIR``), or
    ``seed_everything`` (``PL_GLOBAL_SEED``, ``PL_SEED_WORKERS``)."""
    return name.startswith(("SLURM_", "TORCHELASTIC_", "TORCHPLUG_")) or name in _JOB_VARIABLES


_JOB_VARIABLES = frozenset({
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
})  # fmt: skip


def _interpreters_own(path: str) -> bool:
    """Whether the interpreter puts ``path`` on ``sys.path`` by itself: its standard library (and the folders in
    it, lib-dynload) and its site-packages."""
    stdlib = {os.path.abspath(sysconfig.get_path(key)) for key in ("stdlib", "platstdlib")}
    sites = {os.path.abspath(p) for p in [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                                          *site.getsitepackages()]}  # fmt: skip
    path = os.path.abspath(path)
    return path in stdlib or path in sites or os.path.dirname(path) in stdlib


__all__ = [
    "QUIET", "BoringModel", "clean_env", "distributed_variable", "quiet_trainer_kwargs", "regression_data", "regression_loader",
    "subprocess_env",
]  # fmt: skip
