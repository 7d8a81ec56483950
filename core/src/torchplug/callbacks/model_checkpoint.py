"""``ModelCheckpoint``: save the run periodically, keep the best ``k`` by a monitored metric, and ``last.ckpt``."""

from __future__ import annotations

import errno
import os
import re
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

import torch

from torchplug._checkpoint import temporary_path
from torchplug._errors import MisconfigurationError
from torchplug.callbacks import _checkpoint_folder as _folder
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

# ``{name}`` or ``{name:format_spec}`` in a filename template; names may contain dots and slashes ("val/loss").
_TEMPLATE_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Callback):
    """Save checkpoints during ``fit``, Lightning's ``ModelCheckpoint`` with the same arguments and attributes.

    Without ``monitor`` the latest checkpoint is kept (all of them with ``save_top_k=-1``). With ``monitor`` (a
    name passed to ``self.log``), the ``save_top_k`` best by ``mode`` are kept and files falling out of the top are
    deleted. ``save_last=True`` also writes ``last.ckpt`` at every scheduled save (once at the end of training if
    none came round), so ``fit(ckpt_path="last")`` resumes from the latest state. ``filename`` is a template such as
    ``"{epoch}-{step}-{val_loss:.2f}"`` (-> ``epoch=3-step=400-val_loss=0.12.ckpt``); any logged metric may appear.

    When to save: with ``every_n_train_steps=N`` after every N optimizer steps; otherwise at the end of every
    ``every_n_epochs`` epochs (default 1): at the end of the training epoch, after its validation, or after each
    validation run when validation runs several times per epoch (``val_check_interval``). ``save_on_train_epoch_end``
    overrides that choice. A step or time save with a ``monitor`` waits for the validation that produces the metric
    (not logged yet, or validation due right after the batch). Nothing is saved during the sanity check or with
    ``fast_dev_run``.

    A save writes the top-k file, then ``last``, then deletes what fell out, so a killed process leaves at most one
    stale file; a resumed ``fit`` puts the folder in line with the restored state, touching only files this callback
    wrote (:mod:`torchplug.callbacks._checkpoint_folder`).

    ``save_on_exception=True`` also saves when the run stops by an exception (``on_exception``): a checkpoint named
    by ``filename`` for the step reached, and ``last.ckpt`` with ``save_last`` (not during the sanity check, with
    ``fast_dev_run``, or when this step was saved already). Ctrl-C and SIGTERM stop the run after an optimizer step,
    so such a checkpoint resumes exactly. With several processes it saves only when every rank stopped together (a
    signal; saving is collective): an exception raised on one rank alone is not saved, with a warning.

    Every rank runs this callback and calls ``trainer.save_checkpoint``; only global rank 0 writes and deletes
    files, and the decisions (which file, whether it enters the top k) are rank 0's, broadcast to the others.
    """

    monitors_metrics = True

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        *,
        mode: str = "min",
        save_top_k: int = 1,
        save_last: bool | Literal["link"] | None = None,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        save_weights_only: bool = False,
        save_on_train_epoch_end: bool | None = None,
        save_on_exception: bool = False,
        auto_insert_metric_name: bool = True,
        enable_version_counter: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise MisconfigurationError(f"ModelCheckpoint(mode={mode!r}): `mode` can be 'min' or 'max' but got {mode}")
        if isinstance(save_top_k, bool) or not isinstance(save_top_k, int) or save_top_k < -1:
            raise MisconfigurationError(
                f"ModelCheckpoint(save_top_k={save_top_k!r}) is invalid. Must be >= -1: an int >= 0 keeps that many, "
                "-1 keeps every checkpoint"
            )
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: keeping the best "
                f"{save_top_k} needs a metric to rank them by; pass monitor='<a name you self.log>', or save_top_k=-1 "
                "to keep all"
            )
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationError(f"ModelCheckpoint(save_last={save_last!r}): use True, False, None or 'link'")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise MisconfigurationError(f"ModelCheckpoint({name}={value!r}) is invalid. Must be >= 0 (0 disables it)")
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise MisconfigurationError(
                f"ModelCheckpoint(train_time_interval={train_time_interval!r}): use a datetime.timedelta"
            )
        if sum(bool(v) for v in (every_n_epochs, every_n_train_steps, train_time_interval)) > 1:
            raise MisconfigurationError(
                f"Combination of parameters every_n_train_steps={every_n_train_steps}, every_n_epochs={every_n_epochs} "
                f"and train_time_interval={train_time_interval} in ModelCheckpoint: set only one of them"
            )
        if filename is not None and filename.endswith(self.FILE_EXTENSION):
            filename = filename[: -len(self.FILE_EXTENSION)]

        dirpath = os.fspath(dirpath) if dirpath else None
        self._url = dirpath if dirpath is not None and "://" in dirpath else None  # refused at setup, as Lightning
        self.dirpath: str | None = (
            os.path.realpath(os.path.expanduser(dirpath)) if dirpath and not self._url else dirpath
        )
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.save_weights_only = save_weights_only
        self.save_on_exception = bool(save_on_exception)
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self._train_time_interval = train_time_interval
        self._every_n_train_steps = every_n_train_steps or 0
        if every_n_epochs is None:
            every_n_epochs = 0 if (self._every_n_train_steps or train_time_interval) else 1
        self._every_n_epochs = every_n_epochs

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(float("inf") if mode == "min" else float("-inf"))
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.last_model_path = ""
        self._last_global_step_saved = 0  # nothing is saved before the first optimizer step
        self._last_checkpoint_saved = ""
        self._last_time_checked: float | None = None
        self._validation_ran = False
        self._warned_missing = False
        self._deferred = False  # a step or time save waits for the validation that produces the monitor
        self._saved_in_fit = False
        # Which files are its own (_checkpoint_folder): a lineage id carried across resumes, and the deletions
        # still pending in the current save event.
        self._lineage = _folder.new_lineage()
        self._removals: list[str] = []

    # ---------------------------------------------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    # ---------------------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        if self._url is not None:
            kind = "ModelCheckpoint(save_last='link') is" if self.save_last == "link" else "ModelCheckpoint saves"
            raise MisconfigurationError(
                f"{kind} only supported for local file paths, got dirpath={self._url!r}: torchplug writes "
                "checkpoints to local (or mounted) folders only"
            )
        # Every rank must agree on the folder (loggers pick version_N per process), so rank 0's wins.
        self.dirpath = _broadcast(trainer, self._resolve_dirpath(trainer))
        self._saved_in_fit = self._deferred = False

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        # Here rather than in setup: a checkpoint to resume from has been loaded by now, and then the files are ours.
        resumed = trainer.ckpt_path
        if resumed and self.dirpath is not None:
            # Files of an interrupted save event, or deletions it did not get to: see _checkpoint_folder.
            update = _folder.reconcile(self, trainer) if trainer.is_global_zero else None
            _folder.apply(self, _broadcast(trainer, update))
        if trainer.is_global_zero and self.save_top_k != 0 and self.dirpath is not None and not resumed:
            directory = Path(self.dirpath)
            if directory.is_dir() and any(not p.name.startswith(".") for p in directory.iterdir()):
                warnings.warn(
                    f"checkpoint directory {self.dirpath} exists and is not empty; new checkpoints whose names are "
                    "taken get a -v1, -v2... suffix (pass dirpath= to use a fresh folder)",
                    stacklevel=2,
                )

    def on_train_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._last_time_checked = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._should_skip_saving(trainer):
            return
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if self._train_time_interval is not None and not due:
            now = time.monotonic()
            elapsed = now - (self._last_time_checked or now)
            # Clocks differ per process: rank 0 decides so that every rank saves (and meets the barrier) together.
            due = _broadcast(trainer, elapsed >= self._train_time_interval.total_seconds())
            if due:
                self._last_time_checked = now
        if due:
            candidates = self._monitor_candidates(trainer)
            if self._should_defer(trainer, candidates):
                self._deferred = True
                return
            self._save_event(trainer, candidates, at_epoch_end=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._should_skip_saving(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_at_epoch_end(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        if trainer.sanity_checking:
            return
        self._validation_ran = True
        if self._deferred and not self._should_skip_saving(trainer):
            self._deferred = False
            self._save_event(trainer, self._monitor_candidates(trainer), at_epoch_end=False)
            return
        if not self._should_skip_saving(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_at_epoch_end(trainer)

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        if not self.save_on_exception or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved == trainer.global_step:
            return  # this step is saved already
        if not _may_save_after(trainer, exception, "ModelCheckpoint(save_on_exception=True)"):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_checkpoint(trainer, self.format_checkpoint_name(candidates))
        self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        # save_last promises a last checkpoint: write one if the schedule never came round (as Lightning).
        if self.save_last and not self._saved_in_fit and not trainer.fast_dev_run and trainer.global_step > 0:
            self._save_event(trainer, self._monitor_candidates(trainer), topk=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "lineage": self._lineage,
            "pending_removals": list(self._removals),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dirpath = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or saved_dirpath == self.dirpath:
            self.dirpath = saved_dirpath
            self.best_model_score = state_dict.get("best_model_score")
            self.current_score = state_dict.get("current_score")
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.last_model_path = state_dict.get("last_model_path", "")
            self._lineage = state_dict.get("lineage", self._lineage)
            self._removals = list(state_dict.get("pending_removals", []))
        else:
            warnings.warn(
                f"ModelCheckpoint: The dirpath has changed from {saved_dirpath!r} (where the checkpoint was written) to "
                f"{self.dirpath!r}; only best_model_path is restored, the top-k bookkeeping starts afresh",
                stacklevel=2,
            )
        self.best_model_path = state_dict.get("best_model_path", "")

    def to_yaml(self, filepath: str | os.PathLike[str] | None = None) -> None:
        """Write ``best_k_models`` (checkpoint path -> score, as floats) as YAML to ``filepath`` (default:
        ``<dirpath>/best_k_models.yaml``)."""
        import yaml

        if filepath is None:
            if not self.dirpath:
                raise ValueError(
                    "ModelCheckpoint.to_yaml(): this callback has no dirpath yet (it is set when fit starts); pass "
                    "a filepath"
                )
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        scores = {path: float(score) for path, score in self.best_k_models.items()}
        with open(filepath, "w") as file:
            yaml.safe_dump(scores, file)

    # ---------------------------------------------------------------------------------------------------- naming
    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None
    ) -> str:
        """The path a checkpoint with these metrics gets, e.g. ``<dirpath>/epoch=3-val_loss=0.12-v1.ckpt``."""
        name = self._format_template(filename or self.filename, metrics)
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _format_template(self, template: str | None, metrics: dict[str, Any]) -> str:
        if not template:
            template = "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"

        def substitute(match: re.Match[str]) -> str:
            name, spec = match.group(1), match.group(2) or ""
            value = metrics.get(name, 0)
            if isinstance(value, torch.Tensor):
                value = value.item() if value.numel() == 1 else value.tolist()
            text = format(value, spec)
            return f"{name}{self.CHECKPOINT_EQUALS_CHAR}{text}" if self.auto_insert_metric_name else text

        return _TEMPLATE_FIELD.sub(substitute, template)

    def _resolve_dirpath(self, trainer: Trainer) -> str:
        if self.dirpath is not None:
            return self.dirpath
        from torchplug.loggers import Logger
        from torchplug.loggers._base import FolderLogger

        base = getattr(trainer, "log_dir", None) or trainer.default_root_dir
        logger = trainer.loggers[0] if trainer.loggers else None
        if isinstance(logger, Logger) and not isinstance(logger, FolderLogger):
            # Any other logger (W&B, Comet, LitLogger, one of the user's): Lightning's <save_dir>/<name>/<version>.
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            base = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
        return os.path.realpath(os.path.join(base, "checkpoints"))

    # ---------------------------------------------------------------------------------------------------- when
    def _should_skip_saving(self, trainer: Trainer) -> bool:
        return bool(
            trainer.fast_dev_run
            or getattr(trainer, "stage", "fit") != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # Validation every k > 1 epochs: the monitor is fresh only after validation, so save there.
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        if sum(getattr(trainer, "num_val_batches", None) or [0]) == 0:
            return True
        # The epoch-end validation runs before on_train_epoch_end, so its metrics are there; only several
        # validations per epoch need a save after each of them.
        return getattr(trainer, "val_check_interval", 1.0) == 1.0

    def _should_defer(self, trainer: Trainer, candidates: dict[str, Any]) -> bool:
        """A step or time save with a monitor waits for the validation that is about to produce a fresh value of it
        (the monitor not logged yet, or validation due right after this batch), as in Lightning."""
        # Whether this fit validates at all: before its first validation run no loader is counted yet.
        if self.monitor is None or not trainer.enable_validation:
            return False
        if self.monitor not in candidates:
            return True
        loop, progress = getattr(trainer, "_loop", None), trainer.progress
        if loop is None or progress.batches_done < 1:
            return False
        is_last = progress.batches_done == trainer.num_training_batches
        return loop._val_due(progress.batches_done - 1, is_last)

    def _save_at_epoch_end(self, trainer: Trainer) -> None:
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._save_event(trainer, self._monitor_candidates(trainer), at_epoch_end=True)

    def _save_event(self, trainer: Trainer, candidates: dict[str, Any], at_epoch_end: bool = False,
                    topk: bool = True) -> None:  # fmt: skip
        """The top-k file, then ``last``, then the deletions (the order that leaves at most one stale file)."""
        if topk:
            self._save_topk_checkpoint(trainer, candidates, at_epoch_end)
        self._save_last_checkpoint(trainer, candidates)
        removals, self._removals = self._removals, []
        if trainer.is_global_zero:
            for path in removals:
                try:
                    _folder.remove(path)
                except OSError as err:  # the new checkpoints are written: keep training, but say what is left
                    warnings.warn(
                        f"ModelCheckpoint could not delete {path!r}, which fell out of the checkpoints it keeps: "
                        f"{err.strerror} ({errno.errorcode.get(err.errno or 0, err.errno)}); delete it yourself",
                        UserWarning,
                        stacklevel=2,
                    )

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        candidates = dict(trainer.callback_metrics)
        candidates.setdefault("epoch", torch.tensor(trainer.current_epoch))
        candidates["step"] = torch.tensor(trainer.global_step)
        return candidates

    # ---------------------------------------------------------------------------------------------------- top k
    def _save_topk_checkpoint(self, trainer: Trainer, candidates: dict[str, Any], at_epoch_end: bool) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_without_monitor(trainer, candidates)
            return
        if self.monitor not in candidates:
            message = (
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find {self.monitor!r} in the logged metrics "
                f"{sorted(k for k in candidates if k not in ('epoch', 'step'))}. Did you call "
                f"self.log({self.monitor!r}, value) in the module?"
            )
            has_validation = sum(getattr(trainer, "num_val_batches", None) or [0]) > 0
            if at_epoch_end and (self._validation_ran or not has_validation):
                raise MisconfigurationError(message)
            if not self._warned_missing:
                self._warned_missing = True
                warnings.warn(message + " (no checkpoint was saved this time)", stacklevel=2)
            return
        current = torch.as_tensor(candidates[self.monitor]).detach().float().cpu().reshape(())
        # Rank 0's value decides, so every rank keeps the same top k and saves (and waits) together.
        current = _broadcast(trainer, current)
        if self._enters_top_k(current):
            self._update_best_and_save(trainer, current, candidates)
        elif self.verbose and trainer.is_global_zero:
            print(
                f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} was not in "
                f"top {self.save_top_k}",
                flush=True,
            )

    def _enters_top_k(self, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        if torch.isnan(current):
            return False
        kth = self.best_k_models[self.kth_best_model_path]
        return bool(current < kth) if self.mode == "min" else bool(current > kth)

    def _update_best_and_save(self, trainer: Trainer, current: torch.Tensor, candidates: dict[str, Any]) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        to_delete = ""
        if len(self.best_k_models) == k and k > 0:
            to_delete = self.kth_best_model_path
            self.best_k_models.pop(to_delete)
        if torch.isnan(current):  # a NaN score ranks last
            current = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))

        filepath = self._unique_filepath(trainer, candidates, allowed_existing=to_delete)
        self.current_score = current
        self.best_k_models[filepath] = current
        worst, best = (max, min) if self.mode == "min" else (min, max)
        if len(self.best_k_models) == k:
            self.kth_best_model_path = worst(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]

        if self.verbose and trainer.is_global_zero:
            print(
                f"Epoch {trainer.current_epoch}, global step {trainer.global_step}: {self.monitor!r} reached "
                f"{float(current):0.5f} (best {float(self.best_model_score):0.5f}), saving model to {filepath!r} "
                f"as top {k}",
                flush=True,
            )
        if to_delete and self._should_remove(trainer, to_delete, filepath):
            self._removals.append(to_delete)
        self._save_checkpoint(trainer, filepath)

    def _save_without_monitor(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        # save_top_k=1 replaces the previous file (it may have the same name); -1 keeps every one, so never.
        replaceable = self.best_model_path if self.save_top_k == 1 else ""
        filepath = self._unique_filepath(trainer, candidates, allowed_existing=replaceable)
        previous, self.best_model_path = self.best_model_path, filepath
        if self.save_top_k == 1 and previous and self._should_remove(trainer, previous, filepath):
            self._removals.append(previous)
        self._save_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> None:
        if not self.save_last:
            return
        filepath = self._unique_filepath(
            trainer, candidates, allowed_existing=self.last_model_path, template=self.CHECKPOINT_NAME_LAST
        )
        previous, self.last_model_path = self.last_model_path, filepath
        if previous and self._should_remove(trainer, previous, filepath):
            self._removals.append(previous)
        just_saved = self._last_checkpoint_saved if self._last_global_step_saved == trainer.global_step else ""
        if self.save_last == "link" and just_saved and just_saved != filepath:
            self._link_checkpoint(trainer, just_saved, filepath)
        else:
            self._save_checkpoint(trainer, filepath)

    # ---------------------------------------------------------------------------------------------------- files
    def _unique_filepath(
        self, trainer: Trainer, candidates: dict[str, Any], allowed_existing: str, template: str | None = None
    ) -> str:
        """The formatted path, with ``-v1``, ``-v2``... added while another file already has that name."""
        filepath = self.format_checkpoint_name(candidates, template)
        if self._enable_version_counter and trainer.is_global_zero:
            version = self.STARTING_VERSION
            while os.path.exists(filepath) and filepath != allowed_existing:
                filepath = self.format_checkpoint_name(candidates, template, ver=version)
                version += 1
        # Only rank 0 looks at the disk (other nodes may not share it); everyone uses its answer.
        return _broadcast(trainer, filepath)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        trainer.save_checkpoint(filepath, self.save_weights_only)  # positional, as Lightning calls it
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        self._saved_in_fit = True
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # e.g. WandbLogger(log_model=True) uploads checkpoints from here
                if callable(getattr(logger, "after_save_checkpoint", None)):
                    logger.after_save_checkpoint(self)

    def _link_checkpoint(self, trainer: Trainer, target: str, link: str) -> None:
        if trainer.is_global_zero:
            folder = os.path.dirname(link) or "."
            os.makedirs(folder, exist_ok=True)
            if os.path.isdir(link) and not os.path.islink(link):
                _folder.remove(link)  # a directory checkpoint cannot be replaced by a rename
            # A new link under a hidden name, renamed over the old one: there is a last checkpoint at every instant.
            temporary = temporary_path(link)
            os.symlink(os.path.relpath(target, folder), temporary)
            os.replace(temporary, link)
        trainer.barrier("ModelCheckpoint.link")

    def _should_remove(self, trainer: Trainer, previous: str, current: str) -> bool:
        if previous == current or not previous:
            return False
        previous_real = os.path.realpath(previous)
        resumed_from = trainer.ckpt_path
        if resumed_from and os.path.realpath(resumed_from) == previous_real:
            return False  # never delete the checkpoint this run was resumed from
        if self.dirpath is None:
            return False
        # Only files inside our own folder: a path restored from an old run elsewhere is left alone.
        return Path(os.path.realpath(self.dirpath)) in Path(previous_real).parents


def _may_save_after(trainer: Trainer, exception: BaseException, who: str) -> bool:
    """Whether a save in ``on_exception`` can run: one process, or every rank stopped together (saving is collective)."""
    from torchplug import _stopping

    if getattr(trainer, "world_size", 1) <= 1 or _stopping.is_agreed_stop(exception):
        return True
    warnings.warn(
        f"{who}: {type(exception).__name__} was raised on rank {trainer.global_rank} alone, while the other processes "
        "were elsewhere; a checkpoint needs every process, so none was saved",
        stacklevel=3,
    )
    return False


def _broadcast(trainer: Trainer, obj: Any) -> Any:
    if getattr(trainer, "world_size", 1) <= 1:
        return obj
    return trainer.broadcast(obj, src=0)


# CLI parsers (jsonargparse, for LightningCLI) read the annotation objects: give them types, not strings.
ModelCheckpoint.__init__.__annotations__.update(get_type_hints(ModelCheckpoint.__init__))

__all__ = ["ModelCheckpoint"]
