"""``LitLogger``: experiments on the lightning.ai platform through the ``litlogger`` package (``pip install litlogger``).

``litlogger`` is imported when the logger is used, never when torchplug is: the package is optional.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import torch

from torchplug.loggers._base import DummyExperiment, Logger, _checkpoints_to_upload, _require
from torchplug.utilities import rank_zero_only


class LitLogger(Logger):
    """Log to a ``litlogger.Experiment`` on lightning.ai: metrics as series (``experiment[name].append(value,
    step=...)``), hyperparameters as the experiment's metadata, files and models as artifacts.

    The experiment is created on first use and named ``<name>-<UTC creation time>``; ``name`` defaults to a
    generated one (litlogger's own generator), the creation time is the logger's ``version``. Local files go to
    ``<root_dir>/<name>`` (``log_dir``, also ``save_dir``). ``teamspace`` picks where the charts appear, ``metadata``
    tags the experiment, ``save_logs`` uploads the terminal output. ``log_model=True`` uploads the checkpoints of each
    ``ModelCheckpoint`` when the run ends (each as it is written when ``save_top_k=-1``), under ``checkpoint_name``
    (default: the experiment's name).
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        teamspace: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        store_step: bool = True,
        log_model: bool = False,
        save_logs: bool = True,
        checkpoint_name: str | None = None,
    ) -> None:
        _require("litlogger", "LitLogger")
        if not isinstance(log_model, bool):
            raise TypeError(f"LitLogger(log_model={log_model!r}): use True or False")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"LitLogger(metadata={metadata!r}): use a dict of tags (str keys)")
        self._root_dir = os.fspath(root_dir or "./lightning_logs")
        if name is None:
            # litlogger names its own experiments with this generator (empty in a managed lightning.ai job, where
            # the platform supplies the name)
            from litlogger.generator import _create_name

            name = _create_name()
        self._name = name
        self._version: str | None = None
        self._teamspace = teamspace
        self._metadata = dict(metadata or {})
        self._store_step = store_step
        self._log_model = log_model
        self._save_logs = save_logs
        self._checkpoint_name = checkpoint_name
        self._experiment: Any = None
        self._step = -1
        self._checkpoint_callback: Any = None
        self._logged_model_time: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------------- where
    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | None:
        """The experiment's creation time (UTC, ``2026-01-31T12-00-00.000Z``); ``None`` before it exists."""
        return self._version

    @property
    def root_dir(self) -> str:
        return self._root_dir

    @property
    def log_dir(self) -> str:
        """``<root_dir>/<name>``: where litlogger keeps its local files."""
        return os.path.expanduser(os.path.expandvars(os.path.join(self.root_dir, self.name)))

    @property
    def save_dir(self) -> str:
        return self.log_dir

    @property
    def experiment(self) -> Any:
        """The ``litlogger.Experiment`` (created on first use, and its page's address printed); a ``DummyExperiment``
        on other ranks than global 0."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            import litlogger
            from fsspec.core import url_to_fs

            fs, _ = url_to_fs(self.root_dir)
            fs.makedirs(self.root_dir, exist_ok=True)
            if self._version is None:
                # ':' is not allowed in experiment names: 2026-01-31T12-00-00.000Z
                self._version = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3] + "Z"
            self._experiment = litlogger.Experiment(
                name=self._experiment_title(),
                teamspace=self._teamspace,
                metadata={str(k): str(v) for k, v in self._metadata.items()},
                store_step=self._store_step,
                store_created_at=True,
                log_dir=self.log_dir,
                save_logs=self._save_logs,
            )
            self._experiment.print_url()
        return self._experiment

    @property
    def url(self) -> str:
        """The experiment's page on lightning.ai."""
        return self.experiment.url

    def _experiment_title(self) -> str:
        return self.name if self.version is None else f"{self.name}-{self.version}"

    # ---------------------------------------------------------------------------------------------------- what
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append each value to its series at ``step`` (default: one past the last step logged)."""
        experiment = self.experiment
        self._step = self._step + 1 if step is None else step
        for key, value in metrics.items():
            experiment[key].append(
                value.item() if isinstance(value, torch.Tensor) else value, step=self._step
            )

    def log_hyperparams(self, params: Mapping[str, Any] | argparse.Namespace, metrics: Any = None) -> None:
        """Each hyperparameter becomes a metadata entry of the experiment, as text."""
        self.log_metadata(params)

    def log_metadata(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Set metadata entries (values as text) on the experiment."""
        if isinstance(params, argparse.Namespace):
            params = vars(params)
        if not isinstance(params, Mapping):
            raise TypeError(
                f"LitLogger.log_metadata: expected a dict or a Namespace, got {type(params).__name__}"
            )
        experiment = self.experiment
        for key, value in params.items():
            experiment[key] = str(value)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        warnings.warn("LitLogger does not support `log_graph`", UserWarning, stacklevel=2)

    def log_file(self, path: str) -> None:
        """Upload the file at ``path`` (its key: the path relative to the working directory, else its name)."""
        import litlogger

        self.experiment[_artifact_key(path)] = litlogger.File(path)

    def get_file(self, path: str, verbose: bool = True) -> str:
        """Download the file logged as ``path`` to ``path``; returns where it was written."""
        return self.experiment[_artifact_key(path)].save(path)

    def log_model(
        self,
        model: Any,
        staging_dir: str | None = None,
        verbose: bool = False,
        version: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Save ``model`` (e.g. an ``nn.Module``) and upload it under the experiment's name; ``version`` defaults to
        the last step logged."""
        import litlogger

        experiment = self.experiment
        experiment[self._experiment_title()] = litlogger.Model(
            model, version=_model_version(version, self._step), metadata=metadata, staging_dir=staging_dir
        )

    def log_model_artifact(self, path: str, verbose: bool = False, version: str | None = None) -> None:
        """Upload a saved model file (a checkpoint) under the experiment's name."""
        import litlogger

        experiment = self.experiment
        experiment[self._experiment_title()] = litlogger.Model(
            path, version=_model_version(version, self._step)
        )

    # ---------------------------------------------------------------------------------------------------- end
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if not self._log_model:
            return
        if checkpoint_callback.save_top_k == -1:
            self._upload_checkpoints(checkpoint_callback)
        else:  # uploaded when the run ends
            self._checkpoint_callback = checkpoint_callback

    def finalize(self, status: str | None = None) -> None:
        """Upload the kept checkpoints and close the experiment (nothing happens if it was never created)."""
        if self._experiment is None:
            return
        if self._checkpoint_callback is not None:
            self._upload_checkpoints(self._checkpoint_callback)
        self._experiment.finalize(status)

    def _upload_checkpoints(self, checkpoint_callback: Any) -> None:
        import litlogger

        for mtime, path, _, _ in _checkpoints_to_upload(checkpoint_callback, self._logged_model_time):
            experiment = self.experiment
            key = self._checkpoint_name or experiment.name
            # versioned by the step of the callback's latest save (torchplug's ModelCheckpoint records it)
            step = getattr(checkpoint_callback, "_last_global_step_saved", None)
            experiment[key] = litlogger.Model(path, version=_model_version(None, step))
            self._logged_model_time[path] = mtime


def _artifact_key(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        relative = None
    key = relative if relative is not None and not relative.startswith("..") else os.path.basename(path)
    return key.replace("\\", "/")


def _model_version(version: str | None, step: int | None) -> str | None:
    if version is not None:
        return version
    return str(step) if step is not None and step >= 0 else None


__all__ = ["LitLogger"]
