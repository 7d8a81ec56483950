"""``CSVLogger``: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``; no server, no extra package."""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from torchplug.loggers._base import FolderLogger


class CSVLogger(FolderLogger):
    """Write ``<save_dir>/<name>/version_<N>/metrics.csv`` (one row per logging call) and ``hparams.yaml``.

    ``version=None`` takes the next free ``version_N``; an int gives ``version_<int>``, a string is used as the
    folder name as is. ``save_dir`` may be an fsspec URL (``memory://``, ``s3://``...). Rows are buffered and
    written every ``flush_logs_every_n_steps`` steps and when the run ends. The header grows as new metric names
    appear (the file is rewritten with the wider header, older rows get empty cells), so any spreadsheet,
    ``pandas.read_csv`` or ``torchplug plot`` reads it. As in Lightning, logging into a version folder that already
    holds files warns and starts a fresh ``metrics.csv``.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    NAME_METRICS_FILE = "metrics.csv"
    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if (
            isinstance(flush_logs_every_n_steps, bool)
            or not isinstance(flush_logs_every_n_steps, int)
            or (flush_logs_every_n_steps < 1)
        ):
            from torchplug._errors import MisconfigurationError

            raise MisconfigurationError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}): use an int >= 1"
            )
        super().__init__(save_dir, name, version)
        self._prefix = prefix
        self._flush_every = flush_logs_every_n_steps
        self._experiment: ExperimentWriter | None = None
        self.hparams: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------------------- where

    @property
    def experiment(self) -> ExperimentWriter:
        """The :class:`ExperimentWriter` behind ``metrics.csv`` (creates the version folder on first use)."""
        if self._experiment is None:
            self._experiment = ExperimentWriter(self.log_dir)
        return self._experiment

    # ---------------------------------------------------------------------------------------------------- what
    def log_hyperparams(self, params: Mapping[str, Any] | Any = None) -> None:
        params = _as_dict(params)
        self.hparams.update(params)
        self.experiment.log_hparams(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if step is None:
            step = len(self.experiment.metrics)
        self.experiment.log_metrics(dict(metrics), step)
        if (step + 1) % self._flush_every == 0:
            self.save()

    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.save()  # hparams.yaml is written by log_hyperparams only, as in Lightning

    def finalize(self, status: str) -> None:
        if self._experiment is not None:  # nothing logged, nothing to write: no empty version folder
            self.save()


class ExperimentWriter:
    """The files of one CSV run folder: ``metrics.csv`` (rows buffered in :attr:`metrics` until :meth:`save`) and
    ``hparams.yaml``. ``log_dir`` may be local or an fsspec URL.

    A folder that already holds files is reported with a warning and its ``metrics.csv`` removed, so a run never
    mixes its rows with an earlier run's (Lightning's behaviour).
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        from fsspec.core import url_to_fs

        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs, _ = url_to_fs(log_dir)
        if self._fs.exists(log_dir) and self._fs.listdir(log_dir):
            warnings.warn(
                f"Experiment logs directory {log_dir} exists and is not empty. Previous log files in this directory "
                "will be deleted when the new ones are saved!",
                UserWarning,
                stacklevel=2,
            )
            if self._fs.isfile(self.metrics_file_path):
                self._fs.rm_file(self.metrics_file_path)
        self._fs.makedirs(log_dir, exist_ok=True)

    def log_hparams(self, params: Mapping[str, Any] | Any) -> None:
        """Add ``params`` to the hyperparameters and rewrite ``hparams.yaml``."""
        self.hparams.update(_as_dict(params))
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row; ``step`` defaults to the number of rows buffered so far."""
        row = {name: _as_number(value) for name, value in metrics_dict.items()}
        if isinstance(row.get("epoch"), float) and row["epoch"].is_integer():
            row["epoch"] = int(row["epoch"])  # the trainer passes floats; an epoch reads better as 3 than 3.0
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def save(self) -> None:
        """Write the buffered rows (rewriting the file when new columns appeared) and empty the buffer."""
        if not self.metrics:
            return
        fs, path = self._fs, self.metrics_file_path
        exists = fs.isfile(path) and fs.size(path) > 0
        if exists and not self.metrics_keys:  # a file another writer started: keep its columns
            with fs.open(path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])
        new = list(
            dict.fromkeys(name for row in self.metrics for name in row if name not in self.metrics_keys)
        )
        if not self.metrics_keys:
            # "step" first, then "epoch", then metrics in the order they first appeared.
            new.sort(key=lambda name: {"step": 0, "epoch": 1}.get(name, 2))
        self.metrics_keys += new
        if new and exists:
            self._rewrite()
        else:
            with fs.open(path, "a" if exists else "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                if not exists:
                    writer.writeheader()
                writer.writerows(self.metrics)
        self.metrics = []

    def _rewrite(self) -> None:
        fs, path = self._fs, self.metrics_file_path
        with fs.open(path, "r", newline="") as f:
            old = list(csv.DictReader(f))
        temporary = os.path.join(self.log_dir, f".{self.NAME_METRICS_FILE}.tmp")
        with fs.open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(old)
            writer.writerows(self.metrics)
        fs.mv(temporary, path)  # a crash mid-rewrite never loses the rows already written


def _as_number(value: Any) -> Any:
    if hasattr(value, "item"):  # a tensor or numpy scalar slipped through
        value = value.item()
    return value


# ---------------------------------------------------------------------------------------------------- hparams.yaml
def _as_dict(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return dict(params)
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if hasattr(params, "__dict__"):  # argparse.Namespace and friends
        return dict(vars(params))
    raise TypeError(
        f"hyperparameters must be a dict, a dataclass or a Namespace, got {type(params).__name__}"
    )


def to_plain(value: Any) -> Any:
    """``value`` as YAML-safe data: containers and primitives kept, anything else as its ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_plain(v) for v in items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # tensor or numpy scalar
        return to_plain(value.item())
    return repr(value)


def _write_hparams_once(log_dir: str, name: str, hparams: Mapping[str, Any]) -> None:
    """``hparams.yaml`` in a run folder that exists but has none yet (as Lightning's loggers do on ``save``)."""
    from fsspec.core import url_to_fs

    fs, _ = url_to_fs(log_dir)
    path = os.path.join(log_dir, name)
    if fs.isdir(log_dir) and not fs.exists(path):
        save_hparams_to_yaml(path, hparams)


def save_hparams_to_yaml(path: str | os.PathLike[str], hparams: Mapping[str, Any] | Any) -> None:
    """Write ``hparams`` (a mapping, a dataclass or a Namespace) as YAML; a value that is not plain data is written
    as its ``repr``, with a warning naming it."""
    import yaml
    from fsspec.core import url_to_fs

    path = os.fspath(path)
    fs, _ = url_to_fs(path)
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    plain = to_plain(_as_dict(hparams))
    for key, value in _as_dict(hparams).items():
        if _not_yaml_data(value):
            warnings.warn(
                f"Skipping '{key}' parameter because it is not possible to safely dump to YAML: its repr "
                f"{plain[str(key)]!r} is written instead",
                UserWarning,
                stacklevel=2,
            )
    text = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with fs.open(temporary, "w") as f:
        f.write(text)
    fs.mv(temporary, path)  # readers never see a half-written file


def _not_yaml_data(value: Any) -> bool:
    """Whether :func:`to_plain` writes ``value`` (somewhere inside) as a ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str, enum.Enum, os.PathLike)):
        return False
    if isinstance(value, Mapping):
        return any(_not_yaml_data(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_not_yaml_data(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_not_yaml_data(getattr(value, f.name)) for f in dataclasses.fields(value))
    return not (hasattr(value, "item") and getattr(value, "ndim", None) == 0)


def load_hparams_from_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml
    from fsspec.core import url_to_fs

    fs, _ = url_to_fs(os.fspath(path))
    with fs.open(os.fspath(path), "r") as f:
        return yaml.safe_load(f) or {}


def save_hparams_to_tags_csv(path: str | os.PathLike[str], hparams: Mapping[str, Any] | Any) -> None:
    """Write ``hparams`` (a mapping or a Namespace) as the legacy ``meta_tags.csv``: a ``key,value`` header, then one
    row per hyperparameter (values as ``str``). The folder must exist, as in Lightning."""
    from fsspec.core import url_to_fs

    path = os.fspath(path)
    fs, _ = url_to_fs(path)
    folder = os.path.dirname(path)
    if folder and not fs.isdir(folder):
        raise RuntimeError(
            f"Missing folder: {folder}. save_hparams_to_tags_csv({path!r}) writes into an existing one."
        )
    with fs.open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "value"])
        for key, value in _as_dict(hparams).items():
            writer.writerow([key, value])


def load_hparams_from_tags_csv(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a legacy ``meta_tags.csv`` (see :func:`save_hparams_to_tags_csv`); values that read as Python literals
    (numbers, booleans, None, lists...) come back as such, others as strings. A missing file warns and gives ``{}``,
    as in Lightning."""
    import ast

    from fsspec.core import url_to_fs

    path = os.fspath(path)
    fs, _ = url_to_fs(path)
    if not fs.exists(path):
        warnings.warn(f"Missing Tags: {path}.", RuntimeWarning, stacklevel=2)
        return {}

    def parsed(text: str) -> Any:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text

    with fs.open(path, "r", newline="") as f:
        rows = list(csv.reader(f))
    return {row[0]: parsed(row[1]) for row in rows[1:] if len(row) >= 2}


__all__ = [
    "CSVLogger",
    "ExperimentWriter",
    "load_hparams_from_tags_csv",
    "load_hparams_from_yaml",
    "save_hparams_to_tags_csv",
    "save_hparams_to_yaml",
]
