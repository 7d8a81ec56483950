"""The loop: one stage (fit, validate, test, predict) in one process, over step operations bound once per run.

Per batch the loop calls only the run's :class:`~torchplug.StepOps` and the user's own hooks; backends were asked
once, at setup. The training step reads like a hand-written one::

    batch = to_device(batch)
    closure: output = forward("train", (batch, batch_idx)); zero_grad; backward(loss)
    module.optimizer_step(epoch, batch_idx, optimizer, closure)   # -> optimizer_step(optimizer, closure)
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _data, _heartbeat, _hparams, _optim, _plugins, _state, _stopping
from torchplug._errors import MisconfigurationError
from torchplug._results import Results
from torchplug.callbacks._base import Callback
from torchplug.module import Module
from torchplug.strategies import StepModule
from torchplug.utilities import rank_zero_only

if TYPE_CHECKING:
    from torchplug._step import StepOps
    from torchplug.module import DataModule
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

_EVAL_NAMES = {"validate": "validation", "test": "test", "predict": "predict"}


@dataclass
class Progress:
    """How far ``fit`` got inside an epoch; saved in checkpoints as ``checkpoint["loops"]``.

    ``phase``: ``"train"`` (``batches_done`` batches trained, with their validations), ``"validated"`` (every batch
    done; the epoch-end hooks are running), ``"complete"`` (LR schedulers stepped; only the metric-monitoring
    callbacks remain). ``epoch_start_rng`` replays the epoch's data order when resuming inside it.
    """

    batches_done: int = 0
    total_batches: int = 0
    validated_at: int = -1
    phase: str = "train"
    epoch_start_rng: dict[str, Any] | None = None


def run_stage(trainer: Trainer, stage: str, model: Module, loaders: dict[str, Any], datamodule: DataModule | None,
              ckpt_path: Any) -> Any:  # fmt: skip
    """Run one stage in this process: set up, restore, run, and always tear down.

    SIGINT/SIGTERM (and the job's requeue signal) stop it after an optimizer step (:mod:`torchplug._stopping`):
    ``on_exception`` runs, the loggers are finalized, one line says what was saved, and the process exits with
    :class:`~torchplug._stopping.Stopped` (1 for Ctrl-C, ``128 + signal`` otherwise), without a traceback.
    """
    loop = trainer._loop = Loop(trainer, stage, model, datamodule)
    trainer.interrupted = False
    with _stopping.handling(_stopping.stop_signals(trainer)):
        try:
            try:
                loop.setup()  # inside: a half-made process group is still torn down
                if stage == "fit":
                    ckpt_path = _stopping.restart_checkpoint(trainer, ckpt_path)
                path = _state.resolve_ckpt_path(trainer, ckpt_path) if ckpt_path is not None else None
                if path is not None:
                    _state.restore(loop, path)
                result = loop.fit(loaders) if stage == "fit" else loop.evaluate_stage(stage, loaders[stage])
                if stage == "fit":
                    _stopping.forget_restart(trainer)
            except BaseException as exc:
                signum = _stopping.interruption(exc)
                # With several processes only a stop every rank agreed on may save (saving is collective).
                agreed = bool(signum) and (trainer.world_size == 1 or _stopping.is_agreed_stop(exc))
                trainer.interrupted = True  # Lightning's: any exception interrupts the stage
                saves = trainer._checkpoints_saved
                try:
                    loop.call("on_exception", exc)
                    if agreed:
                        _stopping.save_for_restart(trainer)
                finally:
                    loop.teardown("interrupted" if signum else "failed")
                if not agreed:
                    raise
                requeued = _stopping.requeue(trainer, signum)
                if trainer.is_global_zero:
                    loop.report_stop(signum, trainer._checkpoints_saved > saves, requeued)
                raise _stopping.Stopped(signum) from None
            loop.teardown("success")
            return result
        finally:
            _stopping.finished()


class Loop:
    """Everything one stage binds once: the module, its wrapper, the step operations, the hooks to call."""

    def __init__(self, trainer: Trainer, stage: str, module: Module, datamodule: DataModule | None) -> None:
        self.trainer, self.stage, self.module = trainer, stage, module
        trainer.stage, trainer.lightning_module, trainer.datamodule = stage, module, datamodule
        trainer.ckpt_path = None
        module.trainer = trainer
        if datamodule is not None:
            datamodule.trainer = trainer
        self.wrapped: Any = None
        self.ops: StepOps = None  # type: ignore[assignment]
        self.handles: list[_optim.OptimizerHandle] = []
        self.resume: _state.Resume | None = None
        self.step_taken = True
        self.heartbeat: _heartbeat.Heartbeat | None = None
        self.stop_check: _stopping.StopCheck | None = None
        self.current_hook: str | None = None  # the step or hook running now: where self.log may log, and how
        self.eval_steps_logged: dict[int, int] = collections.defaultdict(int)  # per dataloader, for the stage
        self._bind_user_hooks()

    # ==================================================================================================== hooks
    def _bind_user_hooks(self) -> None:
        """For each hook name: the callbacks' and the module's implementations, found once (instance ones too)."""
        callbacks, module = self.trainer.callbacks, self.module
        names = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]
        self.callback_hooks = {
            n: [(c, getattr(c, n)) for c in callbacks if _overrides(c, n, Callback)] for n in names
        }
        self.module_hooks = {
            n: getattr(module, n) for n in dir(Module) if _is_hook_name(n) and _overrides(module, n, Module)
        }

    def call(self, name: str, *args: Any, monitors: bool | None = None) -> Any:
        """Callbacks' ``name(trainer, module, *args)``, then the module's ``name(*args)`` (its answer returned)."""
        trainer, module = self.trainer, self.module
        previous, self.current_hook = self.current_hook, name
        try:
            for callback, function in self.callback_hooks.get(name, ()):
                if monitors is None or callback.monitors_metrics == monitors:
                    function(trainer, module, *args)
            if monitors is True:
                return None
            method = self.module_hooks.get(name)
            return method(*args) if method is not None else None
        finally:
            self.current_hook = previous

    def overridden(self, *names: str) -> bool:
        return any(self.callback_hooks.get(n) or n in self.module_hooks for n in names)

    # ==================================================================================================== setup
    def setup(self) -> None:
        trainer, hook, module = self.trainer, self.trainer.hook, self.module
        _hparams.drop_unpicklable(module.hparams)
        trainer.world = hook.torchplug_world(trainer=trainer)
        rank_zero_only.rank = trainer.global_rank  # type: ignore[attr-defined]
        trainer.root_device = hook.torchplug_root_device(trainer=trainer)
        for callback in trainer.callbacks:  # Lightning's Callback.log: the module's own self.log
            callback.log, callback.log_dict = module.log, module.log_dict  # type: ignore[attr-defined]
        hook.torchplug_setup_environment(trainer=trainer)
        if trainer.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=trainer.deterministic == "warn")
        self._show_header()
        self._agree_on_log_versions()
        if trainer.local_rank == 0:
            if trainer.datamodule is not None:
                trainer.datamodule.prepare_data()
            module.prepare_data()
        trainer.barrier("prepare_data")
        if trainer.datamodule is not None:
            trainer.datamodule.setup(stage=self.stage)
        self.call("setup", self.stage)
        module.configure_model()

        module.to(trainer.root_device)
        if hook.torchplug_convert_module(trainer=trainer, module=module) is not module:
            raise MisconfigurationError(
                f"precision {trainer.precision_name!r} replaced the module in torchplug_convert_module; convert it in place"
            )
        step_module = StepModule(module)
        hook.torchplug_setup_module(trainer=trainer, module=step_module)
        trainer.optimizers, trainer.lr_scheduler_configs = [], []
        if self.stage == "fit":
            optimizers, trainer.lr_scheduler_configs = _optim.configure_optimizers(module)
            returned, taken = hook.torchplug_setup_optimizers(trainer=trainer, module=module, optimizers=optimizers)
            if returned is not module:
                raise MisconfigurationError(
                    f"precision {trainer.precision_name!r} replaced the module in torchplug_setup_optimizers; change "
                    "it in place and return the same object"
                )
            _optim.repoint_schedulers(trainer.lr_scheduler_configs, optimizers, list(taken))
            trainer.optimizers = list(taken)
            if module.automatic_optimization and len(trainer.optimizers) > 1:
                raise MisconfigurationError(
                    f"configure_optimizers returned {len(trainer.optimizers)} optimizers; automatic optimization takes "
                    "one. Set self.automatic_optimization = False and step them in training_step"
                )
        self.handles = [_optim.OptimizerHandle(self, opt) for opt in trainer.optimizers]
        self.wrapped = hook.torchplug_wrap_module(trainer=trainer, module=step_module)
        ops = hook.torchplug_step_ops(trainer=trainer)
        self.ops = ops.traced(_plugins.trace) if _plugins.tracing() else ops
        self._bind_batch_preparation()
        self.heartbeat = _heartbeat.start(trainer)  # None unless a supervisor watches this process
        self.stop_check = _stopping.StopCheck(trainer)

    def _show_header(self) -> None:
        trainer = self.trainer
        if trainer.is_global_zero and not trainer._header_shown:
            trainer._header_shown = True
            run = trainer.run
            log.info(
                "torchplug: accelerator=%s strategy=%s precision=%s devices=%s num_nodes=%s world_size=%s%s",
                run.accelerator, run.strategy, run.precision, list(run.device_ids), run.num_nodes,
                trainer.world_size, f" environment={run.environment}" if run.environment else "",
            )  # fmt: skip

    def _agree_on_log_versions(self) -> None:
        """Every rank uses rank 0's ``version_N``, so ``trainer.log_dir`` is the same folder everywhere."""
        from torchplug.loggers._base import FolderLogger

        trainer = self.trainer
        if trainer.world_size == 1:
            return
        for logger in trainer.loggers:
            if isinstance(logger, FolderLogger) and logger._version is None:
                logger._version = trainer.broadcast(logger.version if trainer.is_global_zero else None)

    def _bind_batch_preparation(self) -> None:
        """``prepare(batch, dataloader_idx)``: the module's transfer hooks around the run's ``to_device``."""
        module, to_device = self.module, self.ops.to_device
        before = self.module_hooks.get("on_before_batch_transfer")
        transfer = self.module_hooks.get("transfer_batch_to_device")
        after = self.module_hooks.get("on_after_batch_transfer")
        self.transfer_hooks = before is not None or transfer is not None or after is not None
        if not self.transfer_hooks:
            self.prepare = lambda batch, dataloader_idx: to_device(batch)
            return
        device = self.trainer.root_device

        def prepare(batch: Any, dataloader_idx: int) -> Any:
            previous, self.current_hook = self.current_hook, "on_before_batch_transfer"  # where logging is refused
            try:
                if before is not None:
                    batch = before(batch, dataloader_idx)
                batch = transfer(batch, device, dataloader_idx) if transfer is not None else to_device(batch)
                return after(batch, dataloader_idx) if after is not None else batch
            finally:
                self.current_hook = previous

        self.prepare = prepare
        del module

    # ==================================================================================================== teardown
    def teardown(self, status: str) -> None:
        trainer = self.trainer
        _heartbeat.stop()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.finalize(status)
        with contextlib.suppress(Exception):
            if trainer.datamodule is not None:
                trainer.datamodule.teardown(stage=self.stage)
            self.call("teardown", self.stage)
        # Release the strategy's wrapper (DistributedDataParallel) before the process group may go: a wrapper
        # that outlives it is destroyed at interpreter exit, when gloo's threads may already be gone.
        self.wrapped, self.handles = None, []
        trainer.hook.torchplug_teardown(trainer=trainer)
        trainer.training = False
        trainer._results = None
        self.current_hook = None

    def report_stop(self, signum: int, saved: bool, requeued: str | None) -> None:
        """One line on global rank 0: what stopped the stage, what was saved, how to go on."""
        trainer = self.trainer
        where = (f"after step {trainer.global_step} (epoch {trainer.current_epoch})" if self.stage == "fit"
                 else f"during {self.stage}")  # fmt: skip
        text = f"torchplug: stopped by {_stopping.signal_name(signum)} {where}"
        last, last_step = trainer._last_checkpoint, trainer._last_checkpoint_step
        if self.stage == "fit" and last is not None and (saved or last_step == trainer.global_step):
            text += f"; saved {last}; resume with trainer.fit(model, ckpt_path={last!r})"
        elif self.stage == "fit":
            text += "; no checkpoint was saved on stopping (ModelCheckpoint(save_on_exception=True) saves one)"
            if last is not None:
                text += f"; the latest is {last}"
        if requeued:
            text += f"; {requeued}"
        print(text, file=sys.stderr, flush=True)

    # ==================================================================================================== fit
    def fit(self, loaders: dict[str, Any]) -> None:
        trainer, module = self.trainer, self.module
        if not self._has_step("training"):
            raise MisconfigurationError(
                "No `training_step()` method defined. The Trainer expects as minimum a `training_step()`, "
                "`train_dataloader()` and `configure_optimizers()` to be defined."
            )
        train_loaders = _data.dataloaders(trainer, "train", loaders["train"], "fit")
        if not train_loaders:
            raise MisconfigurationError(
                "fit(): no training data; pass train_dataloaders=, a datamodule, or implement train_dataloader()"
            )
        if len(train_loaders) > 1:
            raise MisconfigurationError("fit(): train_dataloaders takes one dataloader")
        self.train_loader = train_loaders[0]
        trainer.num_training_batches = _data.num_batches(self.train_loader, trainer.limit_train_batches,
                                                         "limit_train_batches")  # fmt: skip
        if self._has_step("validation"):
            val_loaders = _data.dataloaders(trainer, "val", loaders["val"], "validate")
        else:
            val_loaders = []
            if self._val_data_defined(loaders["val"]):
                warnings.warn(
                    "You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.",
                    UserWarning,
                    stacklevel=2,
                )
        counts = [_data.num_batches(dl, trainer.limit_val_batches, "limit_val_batches") for dl in val_loaders]
        # A loader limited to 0 batches is no validation at all: no sanity check, no validation hooks.
        self.val_loaders = [dl for dl, count in zip(val_loaders, counts) if count]
        trainer.num_val_batches = [count for count in counts if count]
        self.val_check_batch = self._val_check_batch()
        if not module.automatic_optimization:
            for flag, value in (("accumulate_grad_batches", trainer.accumulate_grad_batches != 1),
                                ("gradient_clip_val", trainer.gradient_clip_val)):  # fmt: skip
                if value:
                    raise MisconfigurationError(
                        f"{flag} is not applied with manual optimization (self.automatic_optimization = False): "
                        "accumulate or clip in training_step (self.clip_gradients(opt, ...)), and leave the flag unset"
                    )
        self._bind_training_step()
        self.call("on_fit_start")
        if trainer.checkpoint_callbacks:  # this run will save: find state a checkpoint cannot hold now, not then
            _state.check_saveable(trainer)
        self._log_hyperparams()
        if trainer.num_sanity_val_steps and self.val_loaders:
            self._sanity_check()
        if self.resume is not None:
            _state.set_rng_states(trainer, self.resume.rng_states)
            trainer.callback_metrics.update(self.resume.callback_metrics)  # the sanity check cleared them
        trainer._results = Results(trainer, training=True)
        trainer.training = True
        in_eval = [name or type(module).__name__ for name, m in module.named_modules() if not m.training]
        if in_eval:  # left as the user set them (a frozen submodule stays in eval), as in Lightning
            warnings.warn(
                f"Found {len(in_eval)} module(s) in eval mode at the start of training ({', '.join(in_eval[:5])}"
                f"{', ...' if len(in_eval) > 5 else ''}). This may lead to unexpected behavior during training. If "
                "this is intentional, you can ignore this warning.",
                UserWarning,
                stacklevel=2,
            )
        self.call("on_train_start")
        try:
            while trainer.num_training_batches and not self._fit_done():  # limit_train_batches=0: no training
                self._train_epoch()
                # A stop asked for during the epoch's last batch lands here, after the epoch ended (and saved)
                if not self._fit_done() and self.stop_check.agree():
                    raise self.stop_check.stop()
        finally:
            trainer.training = False
        self.call("on_train_end")
        self.call("on_fit_end")

    def _has_step(self, stage: str) -> bool:
        """The module implements ``<stage>_step`` (a step set to ``None`` on the instance is none)."""
        name = f"{stage}_step"
        return getattr(self.module, name, None) is not None and _overrides(self.module, name, Module)

    def _val_data_defined(self, given: Any) -> bool:
        """Validation data exists (given, or a ``val_dataloader`` implemented), without building it."""
        from torchplug.module import DataModule

        datamodule = self.trainer.datamodule
        return (
            given is not None
            or (datamodule is not None and type(datamodule).val_dataloader is not DataModule.val_dataloader)
            or type(self.module).val_dataloader is not Module.val_dataloader
        )

    def _log_hyperparams(self) -> None:
        """Send the module's and the datamodule's initial hyperparameters to every logger (global rank 0)."""
        trainer, module, datamodule = self.trainer, self.module, self.trainer.datamodule
        if not trainer.loggers or not trainer.is_global_zero:
            return
        from_module = module._log_hyperparams
        from_data = datamodule is not None and getattr(datamodule, "_log_hyperparams", False)
        hparams: dict[str, Any] | None = None
        if from_module and from_data:
            mine, theirs = module.hparams_initial, datamodule.hparams_initial
            clashing = [k for k in mine.keys() & theirs.keys() if not _same_hparam(mine[k], theirs[k])]
            if clashing:
                raise RuntimeError(
                    f"Error while merging hparams: the keys {clashing} are present in both the LightningModule's and "
                    "LightningDataModule's hparams but have different values."
                )
            hparams = {**mine, **theirs}
        elif from_module:
            hparams = module.hparams_initial
        elif from_data:
            hparams = datamodule.hparams_initial
        for logger in trainer.loggers:
            if hparams is not None:
                logger.log_hyperparams(hparams)
            logger.save()

    def _fit_done(self) -> bool:
        trainer = self.trainer
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return True
        if trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
            return True
        return trainer.should_stop and self._min_reached()

    def _min_reached(self) -> bool:
        trainer = self.trainer
        epochs_ok = trainer.min_epochs is None or trainer.current_epoch >= trainer.min_epochs
        steps_ok = trainer.min_steps is None or trainer.global_step >= trainer.min_steps
        return epochs_ok and steps_ok

    def _val_check_batch(self) -> int | float:
        trainer = self.trainer
        interval, n = trainer.val_check_interval, trainer.num_training_batches
        if isinstance(interval, float):
            if n == math.inf:
                if interval != 1.0:
                    raise MisconfigurationError(
                        f"val_check_interval={interval!r}: a fraction needs a training dataloader with a length"
                    )
                return math.inf
            return max(1, int(n * interval))
        if trainer.check_val_every_n_epoch is not None and n != math.inf and interval > n:
            raise MisconfigurationError(
                f"val_check_interval={interval} is longer than the training epoch ({n} batches); use at most {n}, "
                "a float fraction, or check_val_every_n_epoch=None to count batches across epochs"
            )
        return interval

    def _val_due(self, batch_idx: int, is_last: bool) -> bool:
        """Lightning's schedule: after every ``val_check_batch``-th batch (1.0 means the epoch's last batch) of the
        epochs ``check_val_every_n_epoch`` selects; with ``check_val_every_n_epoch=None`` counted across epochs."""
        trainer, every = self.trainer, self.val_check_batch
        if not self.val_loaders:
            return False
        if trainer.check_val_every_n_epoch is None:
            return every != math.inf and trainer.progress.total_batches % every == 0
        if (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch:
            return False
        return is_last if every == math.inf else (batch_idx + 1) % every == 0

    def _sanity_check(self) -> None:
        trainer, steps = self.trainer, self.trainer.num_sanity_val_steps
        trainer.num_sanity_val_batches = [b if steps == -1 else min(steps, b) for b in trainer.num_val_batches]
        trainer.sanity_checking = True
        self.call("on_sanity_check_start")
        try:
            self.evaluate("validate", self.val_loaders, trainer.num_sanity_val_batches)
        finally:
            trainer.sanity_checking = False
        self.call("on_sanity_check_end")
        trainer.callback_metrics.clear()
        trainer.progress_bar_metrics.clear()
        trainer.logged_metrics.clear()

    def _train_epoch(self) -> None:
        """One training epoch, or what a checkpoint left of it (see :class:`Progress`)."""
        trainer, module, progress = self.trainer, self.module, self.trainer.progress
        resume, self.resume = self.resume, None
        batches = _data.with_is_last(self.train_loader, trainer.num_training_batches)
        if resume is not None and progress.phase == "train" and progress.batches_done:
            _state.set_rng_states(trainer, progress.epoch_start_rng)  # the interrupted epoch's data order
            batches = _state.resumed_batches(self, batches, resume)
        else:
            progress.batches_done, progress.epoch_start_rng = 0, _state.get_rng_states(trainer)
        trainer.hook.torchplug_on_train_epoch_start(trainer=trainer, epoch=trainer.current_epoch)
        if self.heartbeat is not None:
            self.heartbeat.begin("training")
        self.call("on_train_epoch_start")
        if progress.phase == "train":
            self._train_batches(batches)
            progress.phase = "validated"
        # Lightning's order: callbacks, then the module (whose epoch-end logs count for this epoch), then the LR
        # schedulers (ReduceLROnPlateau may monitor those logs), then callbacks that monitor metrics (checkpoints,
        # early stopping), which so see the whole epoch, and a checkpoint holds the stepped schedulers.
        results = trainer._results
        results.dataloader_idx = None
        results.new_batch(None)
        epoch_logs = results.epoch_end()
        self.call("on_train_epoch_end", monitors=False)
        epoch_logs.update(results.epoch_end())
        results.reset_metric_states()
        if module.automatic_optimization:
            _optim.step_schedulers(self, "epoch")
        progress.phase = "complete"
        self.call("on_train_epoch_end", monitors=True)
        self._write_logs(epoch_logs)
        trainer.current_epoch += 1
        progress.batches_done, progress.phase = 0, "train"

    def _train_batches(self, batches: Any) -> None:
        trainer, progress, ops = self.trainer, self.trainer.progress, self.ops
        step, on_batch_end, check_val = self.training_step, ops.on_batch_end, bool(self.val_loaders)
        prepare = functools.partial(self.prepare, dataloader_idx=0) if self.transfer_hooks else ops.to_device
        results = trainer._results
        start_hooks, end_hooks = self.overridden("on_train_batch_start"), self.overridden("on_train_batch_end")
        max_steps, log_every = trainer.max_steps, trainer.log_every_n_steps
        beat, stop_check, stepped_at = self.heartbeat, self.stop_check, trainer.global_step
        stop_due = stop_check.due
        for batch, is_last in batches:
            batch_idx = progress.batches_done
            batch = prepare(batch)
            results.new_batch(batch)
            if batch is None:  # as in Lightning: no step for it, the batch-end hooks see no output
                warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning...",
                              UserWarning, stacklevel=2)  # fmt: skip
                output = None
            else:
                if start_hooks and self.call("on_train_batch_start", batch, batch_idx) == -1:
                    break
                output = step(batch, batch_idx, is_last)
            on_batch_end("train", batch_idx)
            progress.batches_done = batch_idx + 1
            progress.total_batches += 1
            if end_hooks:
                self.call("on_train_batch_end", _detached(output), batch, batch_idx)
            stepped = self._batches_stepped()
            if stepped != self.last_logged_step and (stepped % log_every == 0 or trainer.fast_dev_run):
                self._flush_step_logs()
            if check_val and self._val_due(batch_idx, is_last):
                self.validate_during_fit()
            if (max_steps != -1 and trainer.global_step >= max_steps) or (trainer.should_stop and self._min_reached()):
                break
            if beat is not None:
                beat()
            # A signal stops the run after an optimizer step, never inside an accumulation window.
            if trainer.global_step != stepped_at:
                stepped_at = trainer.global_step
                if not is_last and stop_due():
                    raise stop_check.stop()

    def validate_during_fit(self) -> None:
        trainer = self.trainer
        trainer.progress.validated_at = trainer.progress.total_batches  # before the hooks: a checkpoint records it
        train_results = trainer._results
        if self.heartbeat is not None:
            self.heartbeat.begin("validating")
        self.evaluate("validate", self.val_loaders, trainer.num_val_batches)
        if self.heartbeat is not None:
            self.heartbeat.enter("training")
        trainer._results = train_results
        train_results.dataloader_idx = None

    # ---------------------------------------------------------------------------------------------------- the step
    def _bind_training_step(self) -> None:
        trainer, module = self.trainer, self.module
        self.last_logged_step = self._batches_stepped()
        self.step_args = _data.step_arguments(module.training_step, several_loaders=False)
        self.step_takes_index = len(self.step_args(None, 0, 0)) == 2
        # the default optimizer_step hook is optimizer.step(closure=optimizer_closure), the default optimizer_zero_grad
        # hook optimizer.zero_grad(): called as such when not overridden
        self.module_optimizer_step = self.module_hooks.get("optimizer_step")
        self.module_zero_grad = self.module_hooks.get("optimizer_zero_grad")
        self.zero_grad_hooks = self.overridden("on_before_zero_grad")
        self.backward_hooks = self.overridden("on_before_backward", "on_after_backward")
        self.pre_step_hooks = self.overridden("on_before_optimizer_step")
        self.clip = bool(trainer.gradient_clip_val) or "configure_gradient_clipping" in self.module_hooks
        self.step_schedulers = any(c.interval == "step" for c in trainer.lr_scheduler_configs)
        self.closure = _Closure(self)
        self.training_step = self._automatic_step if module.automatic_optimization else self._manual_step

    def _automatic_step(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        trainer, closure = self.trainer, self.closure
        self.current_hook = "training_step"
        accumulate = trainer.accumulate_grad_batches
        closure.args = (batch, batch_idx) if self.step_takes_index else (batch,)
        closure.first_in_window = batch_idx % accumulate == 0
        closure.batch_idx, closure.calls = batch_idx, 0
        if accumulate > 1 and not is_last and (batch_idx + 1) % accumulate:
            with self.ops.no_sync():
                closure()
            return closure.output
        if self.module_optimizer_step is None:
            self.handles[0].step(closure)
        else:
            self.module_optimizer_step(trainer.current_epoch, batch_idx, self.handles[0], closure)
        if not closure.calls:
            raise MisconfigurationError(
                f"{type(self.module).__name__}.optimizer_step did not call optimizer.step(closure=optimizer_closure) "
                "(or optimizer_closure()): the batch was not trained"
            )
        trainer.global_step += 1
        if self.step_taken and self.step_schedulers:
            _optim.step_schedulers(self, "step")
        return closure.output

    def _manual_step(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        self.current_hook = "training_step"
        return self.ops.forward("train", self.step_args(batch, batch_idx, 0))

    def backward(self, loss: torch.Tensor, optimizer: Any) -> None:
        """``on_before_backward``, the run's backward, ``on_after_backward``: ``self.manual_backward`` (the training
        closure does the same inline)."""
        if self.backward_hooks:
            self.call("on_before_backward", loss)
        try:
            self.ops.backward(loss, getattr(optimizer, "optimizer", optimizer))
        except RuntimeError as err:
            _raise_if_unusable(loss, f"manual_backward(loss) in training_step got {_describe_output(loss)}", err)
            raise
        if self.backward_hooks:
            self.call("on_after_backward")

    def clip_gradients(self, optimizer: Any, value: float, algorithm: str) -> None:
        if algorithm not in ("norm", "value"):  # self.clip_gradients(...) arrives here unchecked
            raise MisconfigurationError(f"gradient_clip_algorithm={algorithm!r}: use 'norm' or 'value'")
        self.ops.clip_gradients(getattr(optimizer, "optimizer", optimizer), value, algorithm)

    # ---------------------------------------------------------------------------------------------------- logging
    def _flush_step_logs(self) -> None:
        trainer = self.trainer
        self.last_logged_step = self._batches_stepped()
        self._write_logs(trainer._results.pop_step_metrics())

    def _batches_stepped(self) -> int:
        """Lightning's step for the loggers: training batches that ended in an optimizer step (every batch with
        manual optimization, where one batch may step several optimizers)."""
        trainer = self.trainer
        return trainer.global_step if self.module.automatic_optimization else trainer.progress.total_batches

    def _write_logs(self, metrics: dict[str, torch.Tensor], step: int | None = None) -> None:
        """Read logged values to the host at a logging point, with the plugins' metrics, and send them out.

        Without ``step`` (training steps, epoch ends) the step is a value logged as ``"step"``, else the last
        training step, with ``epoch`` added unless a value of that name was logged; evaluation steps give their own
        step and no epoch.
        """
        trainer = self.trainer
        for answer in trainer.hook.torchplug_metrics(trainer=trainer):
            if answer:
                metrics.update(answer)
                trainer.logged_metrics.update(answer)
        if not metrics or not trainer.is_global_zero or not trainer.loggers:
            return
        values: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
        if step is None and "step" in values:  # a value logged as "step" is the loggers' step
            step = int(values.pop("step"))
        elif step is None:  # inside fit the batch being logged is not counted yet; after fit it is
            values.setdefault("epoch", trainer.current_epoch)
            step = max(self._batches_stepped() - 1, 0) if self.stage == "fit" else self._batches_stepped()
        for logger in trainer.loggers:
            logger.log_metrics(metrics=values, step=step)

    # ==================================================================================================== evaluation
    def evaluate_stage(self, stage: str, given: Any) -> Any:
        """``validate``/``test``/``predict`` as a stage of their own."""
        trainer = self.trainer
        kind = {"validate": "val"}.get(stage, stage)
        loaders = _data.dataloaders(trainer, kind, given, stage)
        if not loaders:
            raise MisconfigurationError(
                f"{stage}(): no {kind} data; pass dataloaders=, a datamodule, or implement {kind}_dataloader()"
            )
        limit = getattr(trainer, f"limit_{kind}_batches")
        counts = [_data.num_batches(dl, limit, f"limit_{kind}_batches") for dl in loaders]
        setattr(trainer, f"num_{kind}_batches", counts)
        trainer.callback_metrics.clear()
        trainer.progress_bar_metrics.clear()
        if self.heartbeat is not None:
            self.heartbeat.begin({"validate": "validating", "test": "testing", "predict": "predicting"}[stage])
        trainer.logged_metrics.clear()
        self._log_hyperparams()
        return self.evaluate(stage, loaders, counts)

    def evaluate(self, stage: str, loaders: list[Any], counts: list[int | float]) -> Any:
        """One pass over evaluation loaders (also the validation inside ``fit``): per-loader metrics, or the
        predictions of ``predict``."""
        trainer, module, ops = self.trainer, self.module, self.ops
        name = _EVAL_NAMES[stage]
        several = len(loaders) > 1
        step_name = f"{name}_step"
        self._check_dataloader_idx(name, several)
        step_args = _data.step_arguments(getattr(module, step_name), several)
        trainer._results = results = Results(trainer, training=False)
        modes = {m: m.training for m in trainer.model.modules()}  # submodules the user put in eval() stay so
        if f"on_{name}_model_eval" in self.module_hooks:
            self.call(f"on_{name}_model_eval")
        else:
            trainer.model.eval()
        self.call(f"on_{name}_start")
        self.call(f"on_{name}_epoch_start")
        outputs: list[list[Any]] = []
        beat = self.heartbeat
        # A stage of its own may stop between batches; with several processes (whose loaders may differ in length)
        # and inside fit (whose checkpoint would skip the rest of the validation) it runs to its end.
        stop_check = self.stop_check if self.stage != "fit" and trainer.world_size == 1 else None
        stop_due = stop_check.due if stop_check is not None else None
        logged: dict[str, torch.Tensor] = {}
        log_steps = stage != "predict" and not trainer.sanity_checking
        with torch.no_grad():
            for dl_idx, (loader, count) in enumerate(zip(loaders, counts)):
                results.dataloader_idx = dl_idx if several else None
                collected: list[Any] = []
                extra = (dl_idx,) if several else ()
                for batch_idx, batch in enumerate(_data.limited(loader, count)):
                    batch = self.prepare(batch, dl_idx)
                    results.new_batch(batch)
                    self.call(f"on_{name}_batch_start", batch, batch_idx, *extra)
                    self.current_hook = step_name
                    output = ops.forward(name, step_args(batch, batch_idx, dl_idx))
                    self.current_hook = None
                    ops.on_batch_end(name, batch_idx)
                    self.call(f"on_{name}_batch_end", output, batch, batch_idx, *extra)
                    if log_steps and results.step_metrics:  # at the loader's own count of logged steps
                        self._write_logs(results.pop_step_metrics(), step=self.eval_steps_logged[dl_idx])
                        self.eval_steps_logged[dl_idx] += 1
                    if stage == "predict":
                        collected.append(output)
                    if beat is not None:
                        beat()
                    if stop_due is not None and stop_due():
                        raise stop_check.stop()
                outputs.append(collected)
                if several:  # each loader's epoch values when it is done, as Lightning computes them
                    logged.update(results.epoch_end(dataloader_idx=dl_idx))
        results.dataloader_idx = None
        results.new_batch(None)
        logged.update(results.epoch_end())  # the steps' epoch values, for the epoch-end hooks to read
        self.call(f"on_{name}_epoch_end")
        logged.update(results.epoch_end())
        results.reset_metric_states()
        if stage != "predict" and not trainer.sanity_checking:
            self._write_logs(dict(logged))
        self.call(f"on_{name}_end")
        if f"on_{name}_model_train" in self.module_hooks:
            self.call(f"on_{name}_model_train")
        else:
            for submodule, training in modes.items():
                submodule.training = training
        if stage == "predict":
            return outputs[0] if len(outputs) == 1 else outputs
        return [{k: float(v) for k, v in values.items()} for values in results.per_dataloader(logged, len(loaders))]

    def _check_dataloader_idx(self, name: str, several: bool) -> None:
        """Lightning's rule: ``dataloader_idx`` is passed only with several loaders; a step or batch hook that
        requires it with one loader, or cannot take it with several, is refused before the first batch."""
        kind = {"validation": "val"}.get(name, name)
        for hook in (f"{name}_step", f"on_{name}_batch_start", f"on_{name}_batch_end"):
            function = getattr(self.module, hook, None)
            if function is None:
                continue
            try:
                parameters = inspect.signature(function).parameters
            except (TypeError, ValueError):
                continue
            takes = "dataloader_idx" in parameters or any(p.kind is p.VAR_POSITIONAL for p in parameters.values())
            if several and not takes:
                raise RuntimeError(
                    f"You provided multiple `{kind}_dataloader`, but no `dataloader_idx` argument in "
                    f"`{type(self.module).__name__}.{hook}()`. Try adding `dataloader_idx=0` to its signature."
                )
            parameter = parameters.get("dataloader_idx")
            if not several and parameter is not None and parameter.default is parameter.empty:
                raise RuntimeError(
                    f"You provided only a single `{kind}_dataloader`, but have included `dataloader_idx` in "
                    f"`{type(self.module).__name__}.{hook}()`. Either remove the argument or give it a default "
                    "value i.e. `dataloader_idx=0`."
                )


class _Closure:
    """One micro-batch: forward, ``zero_grad`` (first of a window), backward. Returns the loss for the optimizer."""

    __slots__ = ("loop", "optimizer", "args", "batch_idx", "first_in_window", "calls", "output")

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.optimizer = loop.trainer.optimizers[0] if loop.trainer.optimizers else None
        self.args: tuple[Any, ...] = ()
        self.batch_idx, self.first_in_window, self.calls = 0, True, 0
        self.output: Any = None

    def __call__(self) -> torch.Tensor | None:
        loop = self.loop
        self.calls += 1
        self.output = output = loop.ops.forward("train", self.args)
        loss = output if type(output) is torch.Tensor else _loss_of(output)
        optimizer = self.optimizer
        if self.first_in_window:
            if loop.zero_grad_hooks:
                loop.call("on_before_zero_grad", optimizer)
            if loop.module_zero_grad is None:
                optimizer.zero_grad()
            else:
                loop.module_zero_grad(loop.trainer.current_epoch, self.batch_idx, optimizer)
        if loss is None:
            return None
        accumulate = loop.trainer.accumulate_grad_batches
        if loop.backward_hooks:
            loop.call("on_before_backward", loss)
        try:
            loop.ops.backward(loss / accumulate if accumulate > 1 else loss, optimizer)
        except RuntimeError as err:  # torch's words for a loss the step made unusable: say it in the step's terms
            _raise_if_unusable(loss, f"training_step returned {_describe_output(output)}", err)
            raise
        if loop.backward_hooks:
            loop.call("on_after_backward")
        return loss


def _loss_of(output: Any) -> torch.Tensor | None:
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "loss" in output:
        return output["loss"]
    raise MisconfigurationError(
        f"training_step returned {type(output).__name__}; return the loss tensor, a dict with a 'loss' key, or None "
        "to skip the batch"
    )


def _raise_if_unusable(loss: Any, what: str, err: RuntimeError) -> None:
    """After backward failed: when the cause is the loss the user's step made, say so (``what`` it was)."""
    if not isinstance(loss, torch.Tensor):
        return
    if loss.numel() != 1:
        problem = (
            f"a loss must be one number to backpropagate from, this one has {loss.numel()} elements; reduce it "
            "(loss.mean(), loss.sum()) in training_step"
        )
    elif not loss.requires_grad:
        problem = (
            "the loss does not require grad, so nothing can be learned from it: it was detached (.detach(), "
            ".item(), computed under torch.no_grad(), or rebuilt with torch.tensor(...)), or it depends on no "
            "trainable parameter; return the tensor computed from the model's output"
        )
    else:
        return
    raise MisconfigurationError(f"{what}: {problem}") from err


def _describe_output(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        grad = f", grad_fn={type(output.grad_fn).__name__}" if output.grad_fn is not None else ", no grad_fn"
        return f"a tensor of shape {tuple(output.shape)} (dtype {str(output.dtype).replace('torch.', '')}{grad})"
    if isinstance(output, dict) and "loss" in output:
        return f"a dict whose 'loss' is {_describe_output(output['loss'])}"
    return type(output).__name__


def _same_hparam(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a is b
    return bool(a == b)


def _is_hook_name(name: str) -> bool:
    return name.startswith("on_") or name in (
        "setup", "teardown", "backward", "configure_gradient_clipping", "transfer_batch_to_device", "optimizer_step",
        "optimizer_zero_grad",
    )  # fmt: skip


def _overrides(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` has its own ``name``: set on the instance, or defined by a subclass of ``base``."""
    return name in vars(obj) or getattr(type(obj), name, None) is not getattr(base, name, None)


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"].detach()}
    return output
