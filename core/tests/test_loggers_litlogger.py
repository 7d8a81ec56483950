"""LitLogger against a stand-in ``litlogger`` module: the experiment's arguments, series, metadata, files, models,
checkpoints after a real fit, and the errors."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.callbacks import ModelCheckpoint
from torchplug.loggers import LitLogger


class _Series:
    def __init__(self, key: str) -> None:
        self.key = key
        self.points: list[tuple[Any, int | None]] = []

    def append(self, value: Any, step: int | None = None) -> None:
        self.points.append((value, step))

    def save(self, path: str) -> str:
        return f"downloaded:{path}"


class _Experiment:
    """``litlogger.Experiment`` reduced to its dict-like API: ``experiment[key].append(value, step=...)`` for series,
    ``experiment[key] = "text" | File | Model`` for metadata and artifacts, ``finalize``, ``print_url``, ``url``."""

    def __init__(self, name: str, log_dir: str = "lightning_logs", save_logs: bool = False, teamspace: Any = None,
                 metadata: dict[str, str] | None = None, store_step: bool | None = True,
                 store_created_at: bool | None = False) -> None:  # fmt: skip
        self.name, self.log_dir, self.save_logs, self.teamspace = name, log_dir, save_logs, teamspace
        self.metadata, self.store_step, self.store_created_at = metadata, store_step, store_created_at
        self.series: dict[str, _Series] = {}
        self.values: dict[str, Any] = {}
        self.finalized: list[str | None] = []
        self.urls_printed = 0
        self.url = f"https://lightning.ai/teamspace/experiments/{name}"

    def __getitem__(self, key: str) -> _Series:
        return self.series.setdefault(key, _Series(key))

    def __setitem__(self, key: str, value: Any) -> None:
        self.values.setdefault(key, []).append(value)

    def finalize(self, status: str | None = None) -> None:
        self.finalized.append(status)

    def print_url(self) -> None:
        self.urls_printed += 1


class _Artifact:
    def __init__(self, data: Any, **kwargs: Any) -> None:
        self.data, self.kwargs = data, kwargs


@pytest.fixture
def litlogger(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for the ``litlogger`` package, which is not installed here and would talk to lightning.ai: its
    ``Experiment``, ``File``, ``Model`` and ``generator._create_name``, with litlogger's signatures, recording what
    they receive."""
    module = types.ModuleType("litlogger")
    module.experiments = []

    def experiment(**kwargs: Any) -> _Experiment:
        made = _Experiment(**kwargs)
        module.experiments.append(made)
        return made

    module.Experiment = experiment
    module.File = lambda path, description="": _Artifact(path)
    module.Model = _Artifact
    generator = types.ModuleType("litlogger.generator")
    generator._create_name = lambda: "calm-teal-abcd"
    module.generator = generator
    monkeypatch.setitem(sys.modules, "litlogger", module)
    monkeypatch.setitem(sys.modules, "litlogger.generator", generator)
    return module


def test_experiment_arguments_series_and_metadata(litlogger: types.ModuleType, tmp_path: Path) -> None:
    logger = LitLogger(root_dir=tmp_path, name="exp", teamspace="team", metadata={"kind": 1}, save_logs=False)
    assert (logger.name, logger.version, logger.log_dir) == ("exp", None, str(tmp_path / "exp"))
    assert logger.save_dir == logger.log_dir and litlogger.experiments == []
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 1})
    logger.log_metrics({"loss": 0.25}, step=7)
    logger.log_metrics({"loss": 0.125})
    (experiment,) = litlogger.experiments
    assert (
        experiment.name == f"exp-{logger.version}"
        and ":" not in logger.version
        and logger.version.endswith("Z")
    )
    assert (experiment.log_dir, experiment.teamspace, experiment.metadata) == (
        str(tmp_path / "exp"),
        "team",
        {"kind": "1"},
    )
    assert (experiment.store_step, experiment.store_created_at, experiment.save_logs) == (True, True, False)
    assert experiment.urls_printed == 1 and logger.url == experiment.url
    assert experiment.series["loss"].points == [(0.5, 0), (0.25, 7), (0.125, 8)]
    assert experiment.series["acc"].points == [(1, 0)] and isinstance(
        experiment.series["loss"].points[0][0], float
    )

    logger.log_hyperparams({"lr": 0.1, "layers": [2, 3]})
    assert experiment.values == {"lr": ["0.1"], "layers": ["[2, 3]"]}
    with pytest.warns(UserWarning, match="does not support `log_graph`"):
        logger.log_graph(nn.Linear(1, 1))


def test_generated_name_files_and_models(
    litlogger: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    logger = LitLogger()
    assert logger.name == "calm-teal-abcd" and logger.root_dir == "./lightning_logs"
    logger.log_file("configs/run.yaml")
    logger.log_file(str(tmp_path.parent / "elsewhere.txt"))  # outside the working directory: its name
    experiment = litlogger.experiments[0]
    assert [a.data for a in experiment.values["configs/run.yaml"]] == ["configs/run.yaml"]
    assert "elsewhere.txt" in experiment.values
    assert logger.get_file("configs/run.yaml") == "downloaded:configs/run.yaml"
    logger.log_metrics({"x": 1.0}, step=4)
    model = nn.Linear(2, 2)
    logger.log_model(model, metadata={"a": "b"})
    logger.log_model_artifact("model.ckpt", version="v9")
    (first, second) = experiment.values[experiment.name]
    assert (first.data, first.kwargs) == (
        model,
        {"version": "4", "metadata": {"a": "b"}, "staging_dir": None},
    )
    assert (second.data, second.kwargs) == ("model.ckpt", {"version": "v9"})


def test_finalize_only_closes_an_experiment_that_exists(litlogger: types.ModuleType, tmp_path: Path) -> None:
    logger = LitLogger(root_dir=tmp_path, name="n")
    logger.finalize("success")
    assert litlogger.experiments == []
    _ = logger.experiment
    logger.finalize("failed")
    assert litlogger.experiments[0].finalized == ["failed"]


def test_errors(litlogger: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match=r"log_model='all'.*True or False"):
        LitLogger(name="n", log_model="all")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "litlogger", None)
    with pytest.raises(ModuleNotFoundError, match="pip install litlogger"):
        LitLogger(name="n")


class _Regression(torchplug.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_fit_logs_series_and_uploads_checkpoints(litlogger: types.ModuleType, tmp_path: Path) -> None:
    logger = LitLogger(root_dir=tmp_path, name="fit", log_model=True, checkpoint_name="weights")
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    trainer = torchplug.Trainer(
        accelerator="cpu", logger=logger, max_epochs=2, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ModelCheckpoint(save_top_k=-1, every_n_epochs=1)],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="does not support `log_graph`"):
        trainer.fit(_Regression(), data)
    (experiment,) = litlogger.experiments
    assert [step for _, step in experiment.series["train_loss"].points] == [0, 1, 2, 3]
    # save_top_k=-1: each checkpoint is uploaded as it is written, versioned by its step
    uploads = experiment.values["weights"]
    assert [(os.path.basename(u.data), u.kwargs["version"]) for u in uploads] == [
        ("epoch=0-step=2.ckpt", "2"),
        ("epoch=1-step=4.ckpt", "4"),
    ]
    assert experiment.finalized == ["success"]
    # Lightning's folder for a logger that is not a run folder of its own: <save_dir>/<name>/<version>/checkpoints
    folder = tmp_path / "fit" / "fit" / logger.version / "checkpoints"
    assert os.path.dirname(uploads[0].data) == os.path.realpath(folder)
