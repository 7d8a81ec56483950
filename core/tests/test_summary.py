"""ModelSummary, summarize(): rows per depth, parameter counts, sizes, in/out sizes, totals, printed at fit start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug.callbacks import ModelSummary
from torchplug.utilities.model_summary import (
    LEFTOVER_PARAMS_NAME,
    NOT_APPLICABLE,
    UNKNOWN_SIZE,
    get_human_readable_count,
    summarize,
)
from torchplug.utilities.model_summary import ModelSummary as ModelSummaryTable


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
        if len(cells) > 1 and (cells[0].isdigit() or cells[1] == LEFTOVER_PARAMS_NAME):
            rows[cells[1]] = cells[2:]
    return rows


def _totals(text: str) -> dict[str, str]:
    totals = {}
    for line in text.splitlines():
        if "|" not in line and not line.startswith("-"):
            value, label = line[:10], line[10:]
            totals[label.strip()] = value.strip()
    return totals


def test_depth_one_counts_and_sizes() -> None:
    summary = summarize(Net(), max_depth=1)
    assert summary.layer_names == ["encoder", "norm", "head"]
    assert summary.param_nums == [3120, 40, 21]
    assert (summary.total_parameters, summary.trainable_parameters) == (3181, 3180)
    assert summary.model_size == 3181 * 4 / 1e6  # parameters only, float32
    text = str(summary)
    rows = _rows(text)
    assert rows["encoder"] == ["Sequential", "3.1 K", "train", "0"]
    assert rows["head"] == ["Linear", "21", "train", "0"]
    totals = _totals(text)
    assert totals["Trainable params"] == "3.2 K"
    assert totals["Non-trainable params"] == "1"
    assert totals["Total params"] == "3.2 K"
    assert totals["Total estimated model params size (MB)"] == "0.013"
    assert totals["Modules in train mode"] == "6" and totals["Modules in eval mode"] == "0"


def test_depths_and_exact_counts() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 5), nn.Tanh()))
    assert summarize(model, 1).layer_names == ["0", "1"]
    assert summarize(model, -1).layer_names == ["0", "1", "1.0", "1.1"]
    assert summarize(model, 2).param_nums == [16, 25, 25, 0]
    assert summarize(model, 0).layer_names == [] and "|" not in str(summarize(model, 0))
    assert _totals(str(summarize(model, 0)))["Total params"] == "41"


def test_shared_lazy_half_and_leftover_parameters() -> None:
    shared = nn.Linear(4, 4)
    assert summarize(nn.Sequential(shared, shared)).total_parameters == 20  # counted once

    lazy = nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1))
    summary = summarize(lazy)
    with pytest.warns(UserWarning, match="may be inaccurate"):
        assert summary.total_parameters == 4
    assert summary.trainable_parameters == 4  # warned once per summary

    half = summarize(nn.Embedding(1_000_000, 8, dtype=torch.float16))
    assert half.model_size == 16.0  # 2 bytes each

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2, 2))
            self.layer = nn.Linear(2, 2)

    assert _rows(str(summarize(Scaled())))[LEFTOVER_PARAMS_NAME] == [
        NOT_APPLICABLE,
        "4",
        NOT_APPLICABLE,
        NOT_APPLICABLE,
    ]


def test_example_input_gives_sizes_and_flops_and_restores_modes() -> None:
    class Model(torchplug.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 6, batch_first=True)
            self.out = nn.Linear(6, 2)
            self.unused = nn.ReLU()
            self.example_input_array = torch.zeros(3, 5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not self.training
            return self.out(self.rnn(x)[0])

    model = Model()
    model.unused.eval()
    summary = summarize(model)
    assert summary.in_sizes == [[3, 5, 4], [3, 5, 6], UNKNOWN_SIZE]
    assert summary.out_sizes == [[[3, 5, 6], [[1, 3, 6], [1, 3, 6]]], [3, 5, 2], UNKNOWN_SIZE]
    assert model.training and model.rnn.training and not model.unused.training
    assert summary.total_training_modes == {"train": 2, "eval": 1}
    assert (
        sum(summary.flop_counts["out"].values()) == 2 * 15 * 6 * 2
    )  # 15 rows @ (6 x 2), a multiply-add each
    assert summary.total_flops >= 2 * 15 * 6 * 2
    text = str(summary)
    assert "In sizes" in text and "[3, 5, 2]" in text and "Total Flops" in text


def test_human_readable_counts() -> None:
    assert [get_human_readable_count(n) for n in (0, 123, 1234, 2e6, 3e9, 4e14, 5e15)] == [
        "0  ", "123  ", "1.2 K", "2.0 M", "3.0 B", "400 T", "5,000 T",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="number=-1"):
        get_human_readable_count(-1)


def test_bad_depth_for_summarize() -> None:
    with pytest.raises(ValueError, match="`max_depth` can be -1, 0 or > 0, got -2"):
        summarize(nn.Linear(1, 1), max_depth=-2)
    with pytest.raises(ValueError, match="got deep"):
        ModelSummaryTable(nn.Linear(1, 1), max_depth="deep")  # type: ignore[arg-type]


def test_callback_summarize_override_gets_the_columns(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Custom(ModelSummary):
        @staticmethod
        def summarize(summary_data: Any, total_parameters: int, trainable_parameters: int, model_size: float,
                      total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:  # fmt: skip
            seen.update(columns=[c for c, _ in summary_data], total=total_parameters, kwargs=kwargs)

    loader = DataLoader(TensorDataset(torch.randn(8, 10)), batch_size=4)
    trainer = torchplug.Trainer(accelerator="cpu", callbacks=[Custom(color="red")], max_steps=1, logger=False,
                                default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(Net(), loader)
    assert seen == {"columns": [" ", "Name", "Type", "Params", "Mode", "FLOPs"], "total": 3181,
                    "kwargs": {"color": "red"}}  # fmt: skip


def test_printed_at_fit_start_and_can_be_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
