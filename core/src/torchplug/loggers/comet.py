"""``CometLogger``: experiments on Comet through the ``comet_ml`` package (``pip install comet_ml``).

``comet_ml`` is imported when the logger is made, never when torchplug is: the package is optional.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch

from torchplug.loggers._base import DummyExperiment, Logger, _require
from torchplug.utilities import rank_zero_only

log = logging.getLogger(__name__)

#: What the experiment's "Created from" field says.
FRAMEWORK_NAME = "torchplug"


class CometLogger(Logger):
    """Log to a Comet experiment started with ``comet_ml.start`` (on global rank 0, when the logger is made).

    ``api_key`` (better: ``comet login``), ``workspace``, ``project`` and ``experiment_key`` (to continue an
    experiment) go to ``comet_ml.start`` with ``mode`` (``"get_or_create"``, ``"get"``, ``"create"``) and ``online``
    (``False``: an offline experiment, uploaded later); other keyword arguments (``name``, ``offline_directory``,
    ``log_code``, ``tags``...) make its ``comet_ml.ExperimentConfig``. Lightning's older names are still read:
    ``project_name``, ``experiment_name``, ``offline``, ``save_dir``. The project is the logger's ``name``, the
    experiment key its ``version``; metric names get ``<prefix>_`` in front. Comet's automatic logging is turned off
    (``COMET_DISABLE_AUTO_LOGGING=1``): the trainer sends what is logged.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        experiment_key: str | None = None,
        mode: Literal["get_or_create", "get", "create"] | None = None,
        online: bool | None = None,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        _require("comet_ml", "CometLogger")
        if mode not in (None, "get_or_create", "get", "create"):
            raise ValueError(f"CometLogger(mode={mode!r}): use 'get_or_create', 'get', 'create' or None")
        project, online = _read_old_names(project, online, kwargs)
        self._api_key = api_key
        self._workspace = workspace
        self._project_name = project
        self._experiment_key = experiment_key
        self._mode = mode
        self._online = online
        self._prefix = prefix
        self._kwargs = kwargs
        self._experiment: Any = None
        os.environ["COMET_DISABLE_AUTO_LOGGING"] = "1"

        import comet_ml

        config = dict(kwargs)
        if online is False:
            config["disabled"] = True
        self._comet_config = comet_ml.ExperimentConfig(**config)
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            self._start()

    def _start(self) -> None:
        import comet_ml

        experiment = comet_ml.start(
            api_key=self._api_key,
            workspace=self._workspace,
            project=self._project_name,
            experiment_key=self._experiment_key,
            mode=self._mode,
            online=self._online,
            experiment_config=self._comet_config,
        )
        if experiment is None:
            raise RuntimeError(
                f"comet_ml.start returned no experiment (project={self._project_name!r}, "
                f"experiment_key={self._experiment_key!r}, mode={self._mode!r})"
            )
        self._experiment = experiment
        self._experiment_key = experiment.get_key()
        self._project_name = experiment.project_name
        experiment.log_other("Created from", FRAMEWORK_NAME)

    def __getstate__(self) -> dict[str, Any]:
        # An experiment cannot be pickled: a copy continues the same one by its key.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_experiment_key"] = self._experiment.get_key()
        state["_experiment"] = None
        return state

    @property
    def experiment(self) -> Any:
        """The ``comet_ml`` experiment: ``self.logger.experiment.log_image(...)`` in a module. On other ranks than global 0 it
        is a ``DummyExperiment`` (one run per training, not per process)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            self._start()
        return self._experiment

    @property
    def name(self) -> str | None:
        """The project."""
        return self._project_name

    @property
    def version(self) -> str | None:
        """The experiment's key (``None`` before it is started)."""
        return self._experiment.get_key() if self._experiment is not None else None

    @property
    def save_dir(self) -> str | None:
        """Where an offline experiment is written."""
        return self._comet_config.offline_directory

    def log_hyperparams(self, params: Mapping[str, Any] | Any = None) -> None:
        """Log the parameters; nested dicts become ``a|b`` names in Comet."""
        self.experiment.log_parameters(_as_dict(params), nested_support=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log the metrics at ``step``; an ``epoch`` value is Comet's epoch, not a metric. ``metrics`` is not
        changed (tensors are sent as detached CPU copies)."""
        values = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        epoch = values.pop("epoch", None)
        self.experiment.log_metrics(values, prefix=self._prefix, step=step, epoch=epoch)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model's structure (its text) in the experiment."""
        if self._experiment is not None:
            self._experiment.set_model_graph(model)

    def finalize(self, status: str) -> None:
        """Send what is buffered. The experiment stays open, so that a later ``fit``/``test`` with this logger
        continues it; ``logger.experiment.end()`` closes it."""
        if self._experiment is not None:
            self._experiment.flush()


def _read_old_names(
    project: str | None, online: bool | None, kwargs: dict[str, Any]
) -> tuple[str | None, bool | None]:
    """Lightning's earlier argument names, still accepted (with a note in the log)."""
    if "experiment_name" in kwargs:
        log.warning("CometLogger: `experiment_name` is deprecated, use `name`")
        name = kwargs.pop("experiment_name")
        kwargs.setdefault("name", name)
    if "project_name" in kwargs:
        log.warning("CometLogger: `project_name` is deprecated, use `project`")
        old = kwargs.pop("project_name")
        project = project if project is not None else old
    if "offline" in kwargs:
        log.warning("CometLogger: `offline` is deprecated, use `online`")
        offline = kwargs.pop("offline")
        online = online if online is not None else not offline
    if "save_dir" in kwargs:
        log.warning("CometLogger: `save_dir` is deprecated, use `offline_directory`")
        save_dir = kwargs.pop("save_dir")
        kwargs.setdefault("offline_directory", save_dir)
    return project, online


def _as_dict(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return vars(params)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(
        f"hyperparameters must be a dict, a dataclass or a Namespace, got {type(params).__name__}"
    )


__all__ = ["CometLogger"]
