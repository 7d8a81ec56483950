from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any


class Logger:
    """Where metrics go. The trainer calls these on global rank 0 only.

    ``log_metrics`` receives plain Python floats: the trainer reads device values once per logging interval, so
    a logger never forces a device-to-host copy itself.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> int | str | None:
        return None

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def log_dir(self) -> str | None:
        """Folder of this run's files; checkpoints go to ``<log_dir>/checkpoints`` by default."""
        return None

    def log_hyperparams(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Record the model's computational graph, where the backend can show one (called once per run, after the
        hyperparameters). Does nothing by default."""

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """``ModelCheckpoint`` just wrote a file (global rank 0): a logger that uploads checkpoints reads the
        callback's ``best_k_models``, ``best_model_path``, ``last_model_path`` here. Does nothing by default."""

    def save(self) -> None: ...

    def finalize(self, status: str) -> None:
        """The run ended: ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()


class FolderLogger(Logger):
    """A logger writing under ``<save_dir>/<name>/version_N`` (the next free N unless ``version`` is given)."""

    def __init__(self, save_dir: str | os.PathLike[str], name: str | None, version: int | str | None) -> None:
        # "~/runs" and "$SCRATCH/runs" mean what they mean in a shell; "memory://..." and "s3://..." are kept as is.
        self._save_dir = os.path.expandvars(os.path.expanduser(os.fspath(save_dir)))
        self._name = name or ""
        self._version = version

    @property
    def name(self) -> str:
        return self._name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``<save_dir>/<name>``: the folder holding every version."""
        return os.path.join(self._save_dir, self.name)

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version
        return os.path.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")


def _next_version(root: str) -> int:
    """One more than the highest ``version_N`` folder under ``root`` (local or any fsspec URL), else 0."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(root)
    try:
        entries = fs.listdir(path, detail=True)
    except OSError:
        return 0
    versions = []
    for entry in entries:
        match = re.fullmatch(r"version_(\d+)", os.path.basename(entry["name"].rstrip("/")))
        if match and entry["type"] == "directory":
            versions.append(int(match.group(1)))
    return max(versions) + 1 if versions else 0


class DummyExperiment:
    """An experiment that records nothing: every method exists and does nothing, item access works."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._nothing

    def __getitem__(self, index: Any) -> DummyExperiment:
        return self

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class DummyLogger(Logger):
    """A logger that logs nothing, accepting any call (what ``fast_dev_run`` puts in place of the loggers), so code
    that calls ``self.logger.experiment.add_image(...)`` or a logger-specific method runs unchanged."""

    def __init__(self) -> None:
        self._experiment = DummyExperiment()

    @property
    def experiment(self) -> DummyExperiment:
        return self._experiment

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getitem__(self, index: Any) -> DummyLogger:
        return self

    def __iter__(self) -> Any:
        yield self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> None:
            return None

        return method


def _checkpoints_to_upload(
    checkpoint_callback: Any, uploaded: dict[str, float]
) -> list[tuple[float, str, Any, str]]:
    """``(mtime, path, score, tag)`` of the callback's files not uploaded yet (or rewritten since), oldest first."""
    found: dict[str, tuple[Any, str]] = {}
    if hasattr(checkpoint_callback, "last_model_path") and hasattr(checkpoint_callback, "current_score"):
        found[checkpoint_callback.last_model_path] = (checkpoint_callback.current_score, "latest")
    if hasattr(checkpoint_callback, "best_model_path") and hasattr(checkpoint_callback, "best_model_score"):
        found[checkpoint_callback.best_model_path] = (checkpoint_callback.best_model_score, "best")
    for path, score in getattr(checkpoint_callback, "best_k_models", {}).items():
        found[path] = (score, "best_k")
    files = sorted(
        (Path(path).stat().st_mtime, path, score, tag)
        for path, (score, tag) in found.items()
        if path and Path(path).is_file()
    )
    return [f for f in files if f[1] not in uploaded or uploaded[f[1]] < f[0]]


def _require(package: str, logger: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the install command when ``package`` cannot be imported."""
    try:
        found = importlib.util.find_spec(package) is not None
    except ValueError:  # in sys.modules without a spec: a module put there by hand is the one to use
        found = True
    if not found:
        raise ModuleNotFoundError(
            f"{logger} needs the {package} package, which is not installed: pip install {package}"
        )
