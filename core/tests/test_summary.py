"""ModelSummary and summarize(): rows per depth, exact parameter counts and sizes, totals, printed at fit start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import ModelSummary, summarize


class Net(torchplug.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 20))  # 1100 + 2020
        self.norm = nn.BatchNorm1d(20)  # 40 parameters, 41 buffer elements (running stats + counter)
        self.head = nn.Linear(20, 1)  # 21
        self.head.bias.requires_grad_(False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.head(self.norm(self.encoder(batch[0]))).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 7 and cells[0].isdigit():
            rows[cells[1]] = cells[2:]
    return rows


def _totals(text: str) -> dict[str, str]:
    totals = {}
    for line in text.splitlines():
        if "|" not in line and not line.startswith("-"):
            value, label = line.split("  ", 1)
            totals[label.strip()] = value.strip()
    return totals


def test_depth_one_counts_and_sizes() -> None:
    text = summarize(Net(), max_depth=1)
    rows = _rows(text)
    assert list(rows) == ["encoder", "norm", "head"]
    assert rows["encoder"] == ["Sequential", "3.1 K", "3.1 K", "0.012", "train"]  # 3120 float32 = 12480 bytes
    assert rows["norm"] == ["BatchNorm1d", "40", "40", "0.000", "train"]
    assert rows["head"] == ["Linear", "21", "20", "0.000", "train"]
    totals = _totals(text)
    assert totals["Trainable params"] == "3.2 K"  # 3120 + 40 + 20 = 3180
    assert totals["Non-trainable params"] == "1"
    assert totals["Total params"] == "3.2 K"
    # (3181 parameters + 40 running stats) * 4 bytes + an int64 counter = 12892 bytes
    assert totals["Total estimated model size (MB), parameters and buffers"] == "0.013"


def test_depths_and_exact_counts() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 5), nn.Tanh()))
    assert list(_rows(summarize(model, 1))) == ["0", "1"]
    assert list(_rows(summarize(model, -1))) == ["0", "1", "1.0", "1.1"]
    assert _rows(summarize(model, 2))["1.0"][:3] == ["Linear", "25", "25"]
    assert "|" not in summarize(model, 0) and "41" in _totals(summarize(model, 0))["Total params"]


def test_shared_and_lazy_and_big() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert _totals(summarize(model))["Total params"] == "20"  # counted once

    lazy = nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1))
    text = summarize(lazy)
    assert _rows(text)["0"][1] == "0 + ?" and "uninitialised lazy parameters" in text

    big = nn.Embedding(1_000_000, 8, dtype=torch.float16)
    totals = _totals(summarize(big))
    assert totals["Total params"] == "8.0 M"
    assert totals["Total estimated model size (MB), parameters and buffers"] == "16.000"  # fp16: 2 bytes each


def test_printed_at_fit_start_and_can_be_turned_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 10)), batch_size=4)
    options: dict[str, Any] = dict(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_checkpointing=False,
                                   enable_progress_bar=False)  # fmt: skip
    torchplug.Trainer(accelerator="cpu", **options).fit(Net(), loader)
    out = capsys.readouterr().out
    assert out.startswith("  | Name") and "3.2 K" in out and "Total params" in out

    torchplug.Trainer(accelerator="cpu", callbacks=[ModelSummary(max_depth=-1)], **options).fit(Net(), loader)
    assert "encoder.0" in capsys.readouterr().out

    torchplug.Trainer(accelerator="cpu", enable_model_summary=False, **options).fit(Net(), loader)
    assert capsys.readouterr().out == ""


def test_bad_depth() -> None:
    with pytest.raises(MisconfigurationError, match="max_depth=-2"):
        ModelSummary(max_depth=-2)
