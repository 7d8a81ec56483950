"""``TensorBoardLogger``: TensorBoard event files through ``torch.utils.tensorboard`` (extra ``tensorboard``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from torchplug.loggers._base import FolderLogger
from torchplug.loggers.csv_logs import _as_dict, _write_hparams_once, save_hparams_to_yaml, to_plain

_INSTALL_HINT = "pip install 'torchplug[tensorboard]'"


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            f"TensorBoardLogger needs the tensorboard package, which is not installed: {_INSTALL_HINT} "
            "(or use the default CSVLogger, which needs nothing)"
        ) from err


class TensorBoardLogger(FolderLogger):
    """Write TensorBoard event files to ``<save_dir>/<name>/version_<N>[/<sub_dir>]``; view with ``tensorboard --logdir``.

    Scalars go through ``SummaryWriter.add_scalar``; hyperparameters appear in TensorBoard's HPARAMS tab and in
    ``hparams.yaml`` beside the events. ``log_graph=True`` adds the model's graph (traced with
    ``model.example_input_array``) when the run starts. ``default_hp_metric=True`` logs ``hp_metric = -1`` with the
    hyperparameters when no metric is given, so the HPARAMS tab has a column to fill (log ``hp_metric`` yourself).
    Extra keyword arguments go to ``SummaryWriter`` (``flush_secs``, ``max_queue``...). Needs the ``tensorboard``
    extra: ``pip install 'torchplug[tensorboard]'``.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **writer_kwargs: Any,
    ) -> None:
        _require_tensorboard()
        super().__init__(save_dir, name, version)
        self._log_graph = bool(log_graph)
        self._default_hp_metric = bool(default_hp_metric)
        self._prefix = prefix
        self._sub_dir = os.fspath(sub_dir) if sub_dir is not None else None
        self._writer_kwargs = writer_kwargs
        self._experiment: Any = None
        self.hparams: dict[str, Any] = {}

    @property
    def log_dir(self) -> str:
        folder = super().log_dir
        return os.path.join(folder, self._sub_dir) if self._sub_dir else folder

    @property
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` (created on first use, so idle ranks write nothing)."""
        if self._experiment is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._writer_kwargs)
        return self._experiment

    def log_hyperparams(
        self, params: Mapping[str, Any] | Any = None, metrics: Mapping[str, Any] | Any = None
    ) -> None:
        """Record ``params`` (a dict, a Namespace, a dataclass or an OmegaConf config) in ``hparams.yaml`` and the
        HPARAMS tab; ``metrics`` (a dict, or one number for ``hp_metric``) are logged at step 0 beside them."""
        params = _as_dict(_omegaconf_to_container(params))
        self.hparams.update(params)
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if metrics:
            self.log_metrics(metrics, 0)
        if not params:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = _flatten(to_plain(params))
        # TensorBoard's HPARAMS tab takes numbers, strings and bools; lists become their text.
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
        experiment, session_start, session_end = hparams_summary(flat, dict.fromkeys(metrics, 0))
        writer = self.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            name = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            if isinstance(value, dict):
                self.experiment.add_scalars(name, value, step)
            else:
                self.experiment.add_scalar(name, value, step)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Add ``model``'s graph, traced on ``input_array`` (default ``model.example_input_array``: a tensor or a
        tuple of positional inputs), when the logger was made with ``log_graph=True``. An input that is missing or
        cannot be traced is reported with a warning and the run goes on."""
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            warnings.warn(
                "Could not log computational graph to TensorBoard: The `model.example_input_array` attribute is not "
                "set or `input_array` was not given.",
                UserWarning,
                stacklevel=2,
            )
            return
        if not isinstance(input_array, (torch.Tensor, tuple)):
            warnings.warn(
                f"Could not log computational graph to TensorBoard: The `input_array` or `model.example_input_array` "
                f"has type {type(input_array).__name__} which can't be traced by TensorBoard. Make the input array a "
                "tuple representing the positional arguments to the model's `forward()` implementation.",
                UserWarning,
                stacklevel=2,
            )
            return
        from torchplug.module import _jit_reading
        from torchplug.utilities import move_data_to_device

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with _jit_reading():
            self.experiment.add_graph(model, move_data_to_device(input_array, device))

    def save(self) -> None:
        """Flush the event file (creating the run folder, as Lightning's does) and write ``hparams.yaml`` if missing.
        The trainer calls it on global rank 0 only."""
        self.experiment.flush()
        _write_hparams_once(self.log_dir, self.NAME_HPARAMS_FILE, self.hparams)

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None  # a later run with this logger reopens the writer
        _write_hparams_once(self.log_dir, self.NAME_HPARAMS_FILE, self.hparams)


def _omegaconf_to_container(params: Any) -> Any:
    """An OmegaConf config as plain dicts and lists (read without importing omegaconf when it is not in use)."""
    if type(params).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(params, resolve=True)
    return params


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


__all__ = ["TensorBoardLogger"]
