"""``WandbLogger``: metrics, hyperparameters, media and checkpoints to Weights & Biases (``pip install wandb``).

``wandb`` is imported when the logger is used, never when torchplug is: the package is optional.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from torchplug._errors import MisconfigurationError
from torchplug.loggers._base import DummyExperiment, Logger, _checkpoints_to_upload, _require
from torchplug.utilities import rank_zero_only


class WandbLogger(Logger):
    """Log to a Weights & Biases run, created with ``wandb.init`` on first use (or the run already in progress).

    ``project`` (default ``$WANDB_PROJECT``, else ``"lightning_logs"``) is the logger's ``name``; the run's id is its
    ``version``: pass ``version``/``id`` to resume that run. ``save_dir`` (or ``dir``) is where wandb keeps its local
    files; ``offline=True`` sets ``WANDB_MODE=dryrun`` (sync later with ``wandb sync``); ``anonymous=True`` logs
    without an account. Other keyword arguments go to ``wandb.init`` (``entity``, ``group``, ``tags``, ``config``,
    ``sync_tensorboard``, ``resume``...).

    ``log_model=True`` uploads the checkpoints of each ``ModelCheckpoint`` as ``model`` artifacts when the run ends
    successfully (as they are written when ``save_top_k=-1``); ``"all"`` uploads each as it is written. Artifacts are
    named ``checkpoint_name`` (default ``model-<run id>``); the best one is aliased ``best``, every one ``latest``.
    Metrics are logged with ``trainer/global_step`` as their x-axis.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike[str] = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike[str] | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: Literal["all"] | bool = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        _require("wandb", "WandbLogger")
        if log_model not in (True, False, "all"):
            raise ValueError(f"WandbLogger(log_model={log_model!r}): use True, False or 'all'")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(
                f"WandbLogger(add_file_policy={add_file_policy!r}): use 'mutable' or 'immutable'"
            )
        if offline and log_model:
            raise MisconfigurationError(
                f"Providing log_model={log_model} and offline={offline} is an invalid configuration since model "
                "checkpoints cannot be uploaded in offline mode. Hint: set `offline=False` to log your model."
            )
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy
        self._logged_model_time: dict[str, float] = {}
        self._checkpoint_callbacks: dict[int, Any] = {}
        if save_dir is not None:
            save_dir = os.fspath(save_dir)
        elif dir is not None:
            dir = os.fspath(dir)
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": save_dir or dir,
            "id": version or id,
            "resume": "allow",
            "anonymous": "allow" if anonymous else None,
            **kwargs,
        }
        self._project = self._wandb_init["project"]
        self._save_dir = self._wandb_init["dir"]
        self._name = self._wandb_init["name"]
        self._id = self._wandb_init["id"]

    def __getstate__(self) -> dict[str, Any]:
        # A run cannot be pickled. Create it here, in the launching process, and keep its id, so that a process
        # started with "spawn" resumes this same run (wandb.init(id=..., resume="allow")) instead of a new one.
        _ = self.experiment
        experiment, state = self._experiment, self.__dict__.copy()
        if experiment is not None:  # None on other ranks than 0, which have no run
            state["_id"] = getattr(experiment, "id", self._id)
            state["_wandb_init"] = {**self._wandb_init, "id": state["_id"]}
            state["_name"] = getattr(experiment, "name", self._name)
        state["_experiment"] = None
        return state

    # ---------------------------------------------------------------------------------------------------- the run
    @property
    def experiment(self) -> Any:
        """The ``wandb`` run (``wandb.init``'s result): ``self.logger.experiment.log({...})`` in a module. On other ranks than global 0 it
        is a ``DummyExperiment`` (one run per training, not per process)."""
        if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
            return DummyExperiment()
        if self._experiment is None:
            import wandb

            if self._offline:
                os.environ["WANDB_MODE"] = "dryrun"
            if wandb.run is not None:
                warnings.warn(
                    "There is a wandb run already in progress and newly created instances of `WandbLogger` will reuse"
                    " this run. If this is not desired, call `wandb.finish()` before instantiating `WandbLogger`.",
                    UserWarning,
                    stacklevel=2,
                )
                self._experiment = wandb.run
            else:
                self._experiment = wandb.init(**self._wandb_init)
                define_metric = getattr(self._experiment, "define_metric", None)
                if callable(define_metric):
                    if self._wandb_init.get("sync_tensorboard"):
                        define_metric("*", step_metric="global_step")  # TensorBoard's own step
                    else:
                        define_metric("trainer/global_step")
                        define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return self._experiment

    @property
    def name(self) -> str | None:
        """The project."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run's id (the one given to the constructor until the run exists)."""
        return self._experiment.id if self._experiment is not None else self._id

    @property
    def save_dir(self) -> str | None:
        """Where wandb writes its local files."""
        return self._save_dir

    # ---------------------------------------------------------------------------------------------------- logging
    def watch(
        self,
        model: torch.nn.Module,
        log: str | None = "gradients",
        log_freq: int = 100,
        log_graph: bool = True,
    ) -> None:
        """Have wandb record ``model``'s gradients and/or parameters (``log``) every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def log_hyperparams(self, params: Mapping[str, Any] | Any = None) -> None:
        """Update the run's config; values wandb cannot store as JSON are sent as their text."""
        self.experiment.config.update(_json_config(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            self.experiment.log({**metrics, "trainer/global_step": step})
        else:
            self.experiment.log(dict(metrics))

    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """A ``wandb.Table`` from ``columns`` and ``data`` or from a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Text samples, as a table."""
        self.log_table(key, columns, data, dataframe, step)

    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``wandb.Image`` per item of ``images``; each keyword (``caption=[...]``, ``masks=[...]``) is a list with
        one value per image."""
        self._log_media("Image", "images", key, images, step, kwargs)

    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``wandb.Audio`` per item of ``audios`` (``sample_rate=[...]``, ``caption=[...]``: one value per item)."""
        self._log_media("Audio", "audios", key, audios, step, kwargs)

    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: Any) -> None:
        """``wandb.Video`` per item of ``videos`` (``fps=[...]``, ``caption=[...]``: one value per item)."""
        self._log_media("Video", "videos", key, videos, step, kwargs)

    def _log_media(
        self, kind: str, argument: str, key: str, items: Any, step: int | None, kwargs: dict[str, Any]
    ) -> None:
        import wandb

        if not isinstance(items, list):
            raise TypeError(f'Expected a list as "{argument}", found {type(items)}')
        for name, values in kwargs.items():
            if len(values) != len(items):
                raise ValueError(f"Expected {len(items)} items but only found {len(values)} for {name}")
        make = getattr(wandb, kind)
        media = [
            make(item, **{name: values[i] for name, values in kwargs.items()}) for i, item in enumerate(items)
        ]
        self.log_metrics({key: media}, step)

    # ---------------------------------------------------------------------------------------------------- models
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:  # uploaded once the run has succeeded
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    def finalize(self, status: str) -> None:
        """Upload the checkpoints kept for ``log_model=True`` (after a successful run only). The wandb run stays
        open, so a later ``fit``/``test`` with this logger continues it; ``wandb.finish()`` ends it."""
        if status != "success" or self._experiment is None:
            return
        for checkpoint_callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(checkpoint_callback)

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        for mtime, path, score, _ in _checkpoints_to_upload(checkpoint_callback, self._logged_model_time):
            settings = {
                k: getattr(checkpoint_callback, k)
                for k in _CHECKPOINT_SETTINGS
                if hasattr(checkpoint_callback, k)
            }
            if hasattr(checkpoint_callback, "every_n_train_steps"):
                # the key Lightning's artifacts carry, so that both read the same in W&B
                settings["_every_n_train_steps"] = checkpoint_callback.every_n_train_steps
            metadata = {
                "score": score.item() if isinstance(score, torch.Tensor) else score,
                "original_filename": Path(path).name,
                type(checkpoint_callback).__name__: settings,
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            best = path == getattr(checkpoint_callback, "best_model_path", None)
            self.experiment.log_artifact(artifact, aliases=["latest", "best"] if best else ["latest"])
            self._logged_model_time[path] = mtime

    @staticmethod
    def download_artifact(
        artifact: str,
        save_dir: str | os.PathLike[str] | None = None,
        artifact_type: str | None = None,
        use_artifact: bool | None = True,
    ) -> str:
        """Download ``artifact`` (``"entity/project/name:alias"``) into ``save_dir`` and return its folder. Inside a
        run with ``use_artifact``, the run is recorded as its user."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Any:
        """Record that this run uses ``artifact`` and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)


_CHECKPOINT_SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only")


def _json_config(params: Any) -> dict[str, Any]:
    """Hyperparameters as wandb's config stores them: JSON values; anything else (a path, a class) as text."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        params = vars(params)
    elif dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    elif not isinstance(params, Mapping):
        raise TypeError(
            f"hyperparameters must be a dict, a dataclass or a Namespace, got {type(params).__name__}"
        )
    return {str(k): _json_value(v) for k, v in params.items()}


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, argparse.Namespace):
        return _json_value(vars(value))
    if callable(value) and hasattr(value, "__name__"):  # a class or a function: its name
        return value.__name__
    return str(value)


__all__ = ["WandbLogger"]
