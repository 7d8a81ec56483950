"""``TensorBoardLogger``: TensorBoard event files through ``torch.utils.tensorboard`` (extra ``tensorboard``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    ``hparams.yaml`` beside the events. Extra keyword arguments go to ``SummaryWriter`` (``flush_secs``,
    ``max_queue``...). Needs the ``tensorboard`` extra: ``pip install 'torchplug[tensorboard]'``.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        sub_dir: str | os.PathLike[str] | None = None,
        **writer_kwargs: Any,
    ) -> None:
        _require_tensorboard()
        super().__init__(save_dir, name, version)
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

    def log_hyperparams(self, params: Mapping[str, Any] | Any = None, metrics: Mapping[str, float] | None = None) -> None:
        params = _as_dict(params)
        self.hparams.update(params)
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)
        if not self.hparams:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = _flatten(to_plain(self.hparams))
        # TensorBoard's HPARAMS tab takes numbers, strings and bools; lists become their text.
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
        experiment, session_start, session_end = hparams_summary(flat, dict(metrics or {}))
        writer = self.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)
        for key, value in (metrics or {}).items():
            self.experiment.add_scalar(key, value, 0)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            if hasattr(value, "item"):
                value = value.item()
            name = f"{self._prefix}-{key}" if self._prefix else key
            self.experiment.add_scalar(name, value, step)

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
