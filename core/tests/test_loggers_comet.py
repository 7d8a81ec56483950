"""CometLogger against a stand-in ``comet_ml`` module: how the experiment is started, what is logged, pickling,
and the errors."""

from __future__ import annotations

import pickle
import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

from torchplug.loggers import CometLogger


class _Experiment:
    """A ``comet_ml`` experiment reduced to the public methods a logger calls (``log_metrics``, ``log_parameters``,
    ``set_model_graph``, ``log_other``, ``flush``, ``get_key``), recording them."""

    def __init__(self, key: str | None, project: str | None) -> None:
        self.key, self.project_name = key or "k" * 32, project or "general"
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def get_key(self) -> str:
        return self.key

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


@pytest.fixture
def comet_ml(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for the ``comet_ml`` package, which is not installed here and would talk to a server:
    ``comet_ml.start`` and ``comet_ml.ExperimentConfig`` with comet's signatures, recording what they receive."""
    module = types.ModuleType("comet_ml")
    module.started = []

    def start(**kwargs: Any) -> _Experiment:
        experiment = _Experiment(kwargs["experiment_key"], kwargs["project"])
        module.started.append((kwargs, experiment))
        return experiment

    module.start = start
    module.ExperimentConfig = lambda **kwargs: types.SimpleNamespace(**{"offline_directory": None, **kwargs})
    monkeypatch.setitem(sys.modules, "comet_ml", module)
    monkeypatch.delenv("COMET_DISABLE_AUTO_LOGGING", raising=False)
    return module


def test_start_arguments_and_old_names(comet_ml: types.ModuleType) -> None:
    logger = CometLogger(
        api_key="key",
        workspace="ws",
        project_name="proj",
        save_dir="offline",
        offline=True,
        experiment_name="run",
    )
    ((kwargs, experiment),) = comet_ml.started  # started when made, on rank 0
    config = kwargs.pop("experiment_config")
    assert kwargs == {
        "api_key": "key",
        "workspace": "ws",
        "project": "proj",
        "experiment_key": None,
        "mode": None,
        "online": False,
    }
    assert (config.name, config.offline_directory, config.disabled) == ("run", "offline", True)
    assert (logger.name, logger.version, logger.save_dir) == ("proj", experiment.key, "offline")
    assert experiment.calls == [("log_other", ("Created from", "torchplug"), {})]
    import os

    assert os.environ["COMET_DISABLE_AUTO_LOGGING"] == "1"


def test_metrics_parameters_graph_and_finalize(comet_ml: types.ModuleType) -> None:
    logger = CometLogger(project="p", prefix="train")
    experiment = logger.experiment
    experiment.calls.clear()
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    metrics = {"loss": value, "acc": 0.5, "epoch": 2}
    logger.log_metrics(metrics, step=7)
    assert metrics["loss"] is value and "epoch" in metrics  # the caller's dict is left as it was
    ((name, args, kwargs),) = experiment.calls
    assert name == "log_metrics" and kwargs == {"prefix": "train", "step": 7, "epoch": 2}
    assert set(args[0]) == {"loss", "acc"} and not args[0]["loss"].requires_grad
    logger.log_hyperparams({"lr": 0.1, "opt": {"name": "adam"}})
    model = nn.Linear(1, 1)
    logger.log_graph(model)
    logger.finalize("success")
    assert experiment.calls[1:] == [
        ("log_parameters", ({"lr": 0.1, "opt": {"name": "adam"}},), {"nested_support": True}),
        ("set_model_graph", (model,), {}),
        ("flush", (), {}),
    ]


def test_pickled_logger_continues_the_experiment(comet_ml: types.ModuleType) -> None:
    logger = CometLogger(project="p")
    key = logger.version
    copy = pickle.loads(pickle.dumps(logger))
    assert copy._experiment is None
    _ = copy.experiment
    assert comet_ml.started[-1][0]["experiment_key"] == key


def test_errors(comet_ml: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"mode='new'.*'get_or_create', 'get', 'create'"):
        CometLogger(mode="new")  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "comet_ml", None)
    with pytest.raises(ModuleNotFoundError, match="pip install comet_ml"):
        CometLogger()
