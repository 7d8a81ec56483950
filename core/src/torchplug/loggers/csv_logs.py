"""``CSVLogger``: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``; no server, no extra package."""

from __future__ import annotations

import csv
import dataclasses
import enum
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchplug.loggers._base import FolderLogger


class CSVLogger(FolderLogger):
    """Write ``<save_dir>/<name>/version_<N>/metrics.csv`` (one row per logging call) and ``hparams.yaml``.

    ``version=None`` takes the next free ``version_N``; an int gives ``version_<int>``, a string is used as the
    folder name as is. Rows are buffered and written every ``flush_logs_every_n_steps`` steps and when the run
    ends. The header grows as new metric names appear (the file is rewritten with the wider header, older rows
    get empty cells), so any spreadsheet, ``pandas.read_csv`` or ``torchplug plot`` reads it. Resuming into an
    existing version appends to its file.
    """

    NAME_HPARAMS_FILE = "hparams.yaml"
    NAME_METRICS_FILE = "metrics.csv"

    def __init__(
        self,
        save_dir: str | os.PathLike[str],
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if isinstance(flush_logs_every_n_steps, bool) or not isinstance(flush_logs_every_n_steps, int) or (
            flush_logs_every_n_steps < 1
        ):
            from torchplug._errors import MisconfigurationError

            raise MisconfigurationError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}): use an int >= 1"
            )
        super().__init__(save_dir, name, version)
        self._prefix = prefix
        self._flush_every = flush_logs_every_n_steps
        self._experiment: _MetricsWriter | None = None
        self.hparams: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------------------- where

    @property
    def experiment(self) -> _MetricsWriter:
        """The writer behind ``metrics.csv`` (creates the version folder on first use)."""
        if self._experiment is None:
            self._experiment = _MetricsWriter(Path(self.log_dir) / self.NAME_METRICS_FILE)
        return self._experiment

    # ---------------------------------------------------------------------------------------------------- what
    def log_hyperparams(self, params: Mapping[str, Any] | Any = None) -> None:
        params = _as_dict(params)
        self.hparams.update(params)
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, self.hparams)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}-{k}": v for k, v in metrics.items()}
        self.experiment.log(metrics, step)
        if step is not None and (step + 1) % self._flush_every == 0:
            self.save()

    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.save()
        _write_hparams_once(self.log_dir, self.NAME_HPARAMS_FILE, self.hparams)

    def finalize(self, status: str) -> None:
        self.save()


class _MetricsWriter:
    """Buffers rows and writes them to one CSV file, rewriting it when a new column appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        if path.is_file():  # resuming into an existing version: keep its columns and append
            with path.open(newline="") as f:
                self.columns = next(csv.reader(f), [])
        self._logged = 0

    def log(self, metrics: dict[str, Any], step: int | None) -> None:
        row = {name: _as_number(value) for name, value in metrics.items()}
        if isinstance(row.get("epoch"), float) and row["epoch"].is_integer():
            row["epoch"] = int(row["epoch"])  # the trainer passes floats; an epoch reads better as 3 than 3.0
        row["step"] = self._logged if step is None else step
        self._logged += 1
        self.rows.append(row)

    def save(self) -> None:
        if not self.rows:
            return
        new = [name for row in self.rows for name in row if name not in self.columns]
        new = list(dict.fromkeys(new))  # first-seen order, no duplicates
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if not self.columns:
            # "step" first, then "epoch", then metrics in the order they first appeared.
            new.sort(key=lambda name: {"step": 0, "epoch": 1}.get(name, 2))
        if new and exists:
            self.columns += new
            self._rewrite()
        else:
            self.columns += new
            with self.path.open("a" if exists else "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns)
                if not exists:
                    writer.writeheader()
                writer.writerows(self.rows)
        self.rows = []

    def _rewrite(self) -> None:
        with self.path.open(newline="") as f:
            old = list(csv.DictReader(f))
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(old)
            writer.writerows(self.rows)
        os.replace(temporary, self.path)  # a crash mid-rewrite never loses the rows already on disk


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
    raise TypeError(f"hyperparameters must be a dict, a dataclass or a Namespace, got {type(params).__name__}")


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
    path = Path(log_dir) / name
    if path.parent.is_dir() and not path.exists():
        save_hparams_to_yaml(path, hparams)


def save_hparams_to_yaml(path: str | os.PathLike[str], hparams: Mapping[str, Any] | Any) -> None:
    """Write ``hparams`` (a mapping, a dataclass or a Namespace) as YAML; a value that is not plain data is written
    as its ``repr``, with a warning naming it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


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

    with open(path) as f:
        return yaml.safe_load(f) or {}


__all__ = ["CSVLogger", "load_hparams_from_yaml", "save_hparams_to_yaml"]
