"""CSVLogger and TensorBoardLogger: folders, file contents (TensorBoard's own reader), and a real fit."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.loggers import CSVLogger, TensorBoardLogger


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f))


# ------------------------------------------------------------------------------------------------ CSV
def test_csv_versions_and_folders(tmp_path: Path) -> None:
    first = CSVLogger(tmp_path)
    assert first.version == 0 and first.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert not (tmp_path / "lightning_logs").exists()  # nothing is created before something is written
    first.log_metrics({"a": 1.0}, step=0)
    first.finalize("success")
    assert CSVLogger(tmp_path).version == 1
    (tmp_path / "lightning_logs" / "version_7").mkdir()
    (tmp_path / "lightning_logs" / "version_9").write_text("a file, not a version folder")
    assert CSVLogger(tmp_path).version == 8
    assert CSVLogger(tmp_path, name="exp", version="run-a").log_dir == str(tmp_path / "exp" / "run-a")
    assert CSVLogger(tmp_path, name=None, version=3).log_dir == str(tmp_path / "version_3")


def test_csv_contents_and_growing_header(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    metrics_file = Path(logger.log_dir) / "metrics.csv"
    logger.log_metrics({"loss": 0.5, "epoch": 0.0}, step=0)
    assert not metrics_file.exists()  # buffered until the flush interval
    logger.log_metrics({"loss": 0.25, "epoch": 0.0}, step=1)  # (1 + 1) % 2 == 0: flushed
    assert _header(metrics_file) == ["step", "epoch", "loss"]
    logger.log_metrics({"val_loss": 0.75, "epoch": 0.0}, step=1)
    logger.log_metrics({"loss": torch.tensor(0.125), "epoch": 1.0}, step=2)
    logger.finalize("success")
    # A new column rewrites the file with the wider header; older rows get empty cells.
    assert _header(metrics_file) == ["step", "epoch", "loss", "val_loss"]
    assert _rows(metrics_file) == [
        {"step": "0", "epoch": "0", "loss": "0.5", "val_loss": ""},
        {"step": "1", "epoch": "0", "loss": "0.25", "val_loss": ""},
        {"step": "1", "epoch": "0", "loss": "", "val_loss": "0.75"},
        {"step": "2", "epoch": "1", "loss": "0.125", "val_loss": ""},
    ]
    assert not [p for p in Path(logger.log_dir).iterdir() if p.name.startswith(".")]
    # Logging into that version again warns and starts a fresh file, as Lightning does.
    again = CSVLogger(tmp_path, version=0)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        again.log_metrics({"loss": 0.0625, "lr": 0.1}, step=3)
    again.save()
    assert _header(metrics_file) == ["step", "loss", "lr"]
    assert _rows(metrics_file) == [{"step": "3", "loss": "0.0625", "lr": "0.1"}]


def test_csv_hparams_yaml(tmp_path: Path) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(
        {"lr": 0.1, "layers": (64, 32), "name": "mlp", "path": tmp_path / "data", "nested": {"a": [1, 2]},
         "obj": Opaque(), "scalar": torch.tensor(3), "dtype": torch.float16, "none": None, "inf": float("inf")}
    )  # fmt: skip
    logger.log_hyperparams(argparse.Namespace(batch_size=32))
    loaded = yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())
    assert loaded == {
        "lr": 0.1, "layers": [64, 32], "name": "mlp", "path": str(tmp_path / "data"), "nested": {"a": [1, 2]},
        "obj": "Opaque()", "scalar": 3, "dtype": "torch.float16", "none": None, "inf": "inf", "batch_size": 32,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ TensorBoard
def _events(log_dir: str) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_events_read_back(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    assert logger.log_dir == str(tmp_path / "tb" / "version_0")
    logger.log_hyperparams({"lr": 0.01, "layers": [2, 3], "opt": {"name": "adam"}})
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.5 * step)}, step=step)
    logger.finalize("success")

    events = _events(logger.log_dir)
    # default_hp_metric=True: hp_metric = -1 at step 0 gives the HPARAMS tab a metric column to fill in later
    assert sorted(events.Tags()["scalars"]) == ["acc", "hp_metric", "loss"]
    assert [(e.step, e.value) for e in events.Scalars("hp_metric")] == [(0, -1.0)]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [e.value for e in events.Scalars("acc")] == pytest.approx([0.0, 0.5, 1.0])
    # The hyperparameters reach TensorBoard's HPARAMS plugin, and hparams.yaml beside the events.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.01)
    assert hparams["layers"].string_value == "[2, 3]" and hparams["opt/name"].string_value == "adam"
    assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text())["layers"] == [2, 3]


def test_tensorboard_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "tensorboard", None
    )  # makes `import tensorboard` fail as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchplug\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)


def test_importing_torchplug_loads_no_optional_packages() -> None:
    import subprocess

    code = (
        "import sys, torchplug, torchplug.loggers, torchplug.callbacks; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'yaml', 'matplotlib', 'wandb', 'comet_ml', 'litlogger', 'fsspec'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ a real fit
class Regression(torchplug.Module):
    def __init__(self, lr: float = 0.05, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def test_fit_writes_csv_and_tensorboard(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    csv_logger, tb_logger = CSVLogger(tmp_path), TensorBoardLogger(tmp_path, name="tb")
    trainer = torchplug.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=[csv_logger, tb_logger], max_epochs=2, log_every_n_steps=3,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(
        Regression(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=16)
    )  # 8 steps per epoch
    assert trainer.log_dir == csv_logger.log_dir  # the first logger names the run's folder

    rows = _rows(Path(csv_logger.log_dir) / "metrics.csv")
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    val = [(int(r["step"]), int(r["epoch"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    # train_loss every log_every_n_steps=3 optimizer steps (global steps 3, 6, ..., 15, logged at 0-based step)
    assert [s for s, _ in train] == [2, 5, 8, 11, 14]
    assert [(s, e) for s, e, _ in val] == [(7, 0), (15, 1)]
    assert val[1][2] < val[0][2]  # it learned something
    assert yaml.safe_load((Path(csv_logger.log_dir) / "hparams.yaml").read_text()) == {"lr": 0.05, "width": 4}

    events = _events(tb_logger.log_dir)
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [
        (s, pytest.approx(v)) for s, v in train
    ]
    assert [e.step for e in events.Scalars("val_loss")] == [7, 15]


def test_dummy_logger_accepts_anything_and_fast_dev_run_uses_it(tmp_path: Path) -> None:
    from torchplug.loggers import DummyExperiment, DummyLogger

    logger = DummyLogger()
    logger.log_metrics("anything", 2, three=3)
    logger.log_text("a logger-specific method")
    logger.experiment.add_image("x", None)
    experiment = DummyExperiment()
    experiment["key"] = "value"
    assert experiment["key"] is experiment
    assert isinstance(
        torchplug.Trainer(accelerator="cpu", fast_dev_run=True, default_root_dir=tmp_path).logger, DummyLogger
    )


def test_default_logger_is_lightnings_and_any_logger_like_object_is_accepted(tmp_path: Path) -> None:
    from unittest.mock import Mock

    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path)
    assert isinstance(
        trainer.logger, TensorBoardLogger
    )  # tensorboard is installed here, as Lightning picks it
    mock = Mock(save_dir=str(tmp_path / "mock"))
    trainer = torchplug.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=mock, max_steps=1, enable_progress_bar=False
    )
    assert trainer.logger is mock and trainer.log_dir == str(tmp_path / "mock")
    trainer.loggers = None
    assert trainer.loggers == []


# ------------------------------------------------------------------------------------------------ Lightning's surface
def test_csv_experiment_writer_and_a_remote_filesystem() -> None:
    import fsspec

    from torchplug.loggers.csv_logs import ExperimentWriter

    logger = CSVLogger("memory://torchplug-csv-test", name="exp")
    writer = logger.experiment
    assert isinstance(writer, ExperimentWriter)
    assert writer.metrics_file_path == "memory://torchplug-csv-test/exp/version_0/metrics.csv"
    writer.log_metrics({"loss": torch.tensor(0.5)})
    writer.log_metrics({"loss": 0.25, "acc": 1})
    assert writer.metrics == [{"loss": 0.5, "step": 0}, {"loss": 0.25, "acc": 1, "step": 1}]
    writer.save()
    assert writer.metrics == []
    logger.log_hyperparams({"lr": 0.1})
    fs = fsspec.filesystem("memory")
    with fs.open("/torchplug-csv-test/exp/version_0/metrics.csv", "r") as f:
        assert f.read().splitlines() == ["step,loss,acc", "0,0.5,", "1,0.25,1"]
    assert CSVLogger("memory://torchplug-csv-test", name="exp").version == 1
    fs.rm("/torchplug-csv-test", recursive=True)


def test_csv_step_defaults_to_rows_buffered_and_flush_follows_it(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"a": 1.0})  # step 0
    assert logger.experiment.metrics and not Path(logger.experiment.metrics_file_path).exists()
    logger.log_metrics({"a": 2.0})  # step 1: (1 + 1) % 2 == 0 writes
    assert not logger.experiment.metrics
    assert _rows(Path(logger.experiment.metrics_file_path)) == [
        {"step": "0", "a": "1.0"},
        {"step": "1", "a": "2.0"},
    ]


def test_tensorboard_folders_follow_name_version_and_sub_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Named(TensorBoardLogger):
        @property
        def name(self) -> str:
            return "named"

        @property
        def version(self) -> str:
            return "v"

    assert Named(tmp_path, sub_dir="sub").log_dir == str(tmp_path / "named" / "v" / "sub")
    monkeypatch.setenv("TORCHPLUG_TB_TEST", str(tmp_path / "env"))
    assert TensorBoardLogger("$TORCHPLUG_TB_TEST/runs", version=2).log_dir == str(
        tmp_path / "env" / "runs" / "lightning_logs" / "version_2"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TensorBoardLogger("~/runs").save_dir == str(tmp_path / "home" / "runs")


def test_tensorboard_hparams_with_metrics_and_without_hp_metric(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="with", default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_hyperparams({"width": 4}, metrics={"best": torch.tensor([0.25])})
    logger.log_hyperparams({"depth": 2}, metrics=0.5)
    logger.finalize("success")
    events = _events(logger.log_dir)
    assert sorted(events.Tags()["scalars"]) == ["best", "hp_metric"]
    assert [(e.step, e.value) for e in events.Scalars("best")] == [(0, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("hp_metric")] == [(0, 0.5)]
    assert yaml.safe_load((Path(logger.log_dir) / "hparams.yaml").read_text()) == {
        "lr": 0.1,
        "width": 4,
        "depth": 2,
    }


class _WithForward(Regression):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_tensorboard_log_graph_in_a_fit_and_its_warnings(tmp_path: Path) -> None:
    model = _WithForward()
    unattached = TensorBoardLogger(tmp_path, name="direct", log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array` attribute is not set"):
        unattached.log_graph(model)
    with pytest.warns(UserWarning, match="has type dict which can't be traced"):
        unattached.log_graph(model, {"x": torch.randn(1, 4)})
    unattached.log_graph(
        model, torch.randn(2, 4)
    )  # an unattached module traces (its trainer reads None meanwhile)
    unattached.finalize("success")
    assert _events(unattached.log_dir).Graph() is not None
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        _ = model.trainer  # and raises again afterwards
    assert (
        TensorBoardLogger(tmp_path, name="off").log_graph(model, torch.randn(2, 4)) is None
    )  # log_graph=False

    model.example_input_array = torch.randn(2, 4)
    logger = TensorBoardLogger(tmp_path, name="fit", log_graph=True)
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    trainer = torchplug.Trainer(accelerator="cpu", logger=logger, max_steps=1, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, data)
    graph = _events(logger.log_dir).Graph()
    assert any(node.op == "aten::linear" for node in graph.node)
