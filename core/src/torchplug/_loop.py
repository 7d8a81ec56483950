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
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchplug import (
    _config,
    _heartbeat,
    _hparams,
    _optim,
    _plugins,
    _profiling,
    _state,
    _step,
    _stopping,
    _trial,
)
from torchplug._errors import MisconfigurationError
from torchplug._evaluation import Evaluation
from torchplug._schedule import Schedule, overrides
from torchplug._states import RunningStage, TrainerFn, TrainerStatus
from torchplug._trainer_setup import init_module
from torchplug._training import Training, _describe_output, _raise_if_unusable
from torchplug.callbacks._base import Callback
from torchplug.module import Module
from torchplug.strategies import StepModule
from torchplug.utilities import rank_zero_only

if TYPE_CHECKING:
    from torchplug._step import StepOps
    from torchplug.module import DataModule
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

_FIRST_STAGE = {"fit": RunningStage.TRAINING, "validate": RunningStage.VALIDATING, "test": RunningStage.TESTING,
                "predict": RunningStage.PREDICTING}  # fmt: skip


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
              ckpt_path: Any, options: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Run one stage in this process: set up, restore, run, and always tear down.

    SIGINT/SIGTERM (and the job's requeue signal) stop it after an optimizer step (:mod:`torchplug._stopping`):
    ``on_exception`` runs, the loggers are finalized, one line says what was saved, and the process exits with
    :class:`~torchplug._stopping.Stopped` (1 for Ctrl-C, ``128 + signal`` otherwise), without a traceback.
    """
    loop = trainer._loop = Loop(trainer, stage, model, datamodule, loaders)
    anomaly = torch.autograd.set_detect_anomaly(True) if trainer.detect_anomaly else contextlib.nullcontext()
    trained = stage == "fit"
    with _stopping.handling(_stopping.stop_signals(trainer)):
        try:
            try:
                with anomaly:
                    loop.setup()  # inside: a half-made process group is still torn down
                    if stage == "fit":
                        ckpt_path = _stopping.restart_checkpoint(trainer, ckpt_path)
                    path = _state.resolve_ckpt_path(trainer, ckpt_path) if ckpt_path is not None else None
                    if path is not None:
                        _state.restore(loop, path)
                    if stage == "fit":
                        result = loop.fit(loaders)
                        _stopping.forget_restart(trainer)
                    else:
                        result = loop.evaluate_stage(stage, loaders[stage], **options or {})
            except _trial.EndStage:  # a tuner's search ended the stage at its start: a success, nothing trained
                result, trained = None, False
            except BaseException as exc:
                signum = _stopping.interruption(exc)
                # With several processes only a stop every rank agreed on may save (saving is collective).
                agreed = bool(signum) and (trainer.world_size == 1 or _stopping.is_agreed_stop(exc))
                trainer.interrupted = True  # Lightning's: any exception interrupts the stage
                saves = trainer._checkpoints_saved
                try:
                    loop.call("on_exception", exc)
                    if trainer.datamodule is not None:
                        trainer.datamodule.on_exception(exc)
                    if agreed:
                        _stopping.save_for_restart(trainer)
                finally:
                    loop.teardown("interrupted" if signum else "failed")
                    trainer.state.stage = None
                if not agreed:
                    raise
                requeued = _stopping.requeue(trainer, signum)
                if trainer.is_global_zero:
                    loop.report_stop(signum, trainer._checkpoints_saved > saves, requeued)
                raise _stopping.stopped(signum) from None
            loop.teardown("success")
            trainer.state.status = TrainerStatus.FINISHED
            if trained:
                trainer._fitted = model
            trainer.state.stage = None
            return result
        finally:
            trainer._received_sigterm = _stopping.sigterm_received()
            _stopping.finished()


def configure_model(module: Module) -> None:
    """Call ``configure_model``, or ``configure_sharded_model`` (its name before Lightning 2.1) with a
    DeprecationWarning; a module overriding both is refused, since only one of them would run."""
    cls = type(module)
    if not callable(getattr(cls, "configure_sharded_model", None)):
        module.configure_model()
        return
    name = cls.__name__
    if cls.configure_model is not Module.configure_model:
        raise RuntimeError(
            f"Both `{name}.configure_model`, and `{name}.configure_sharded_model` are overridden. The latter is "
            "deprecated and it should be replaced with the former: move its body into `configure_model`"
        )
    warnings.warn(
        f"You have overridden `{name}.configure_sharded_model` which is deprecated. Please override the "
        "`configure_model` hook instead (same call, same moment: after `setup`, before `configure_optimizers`).",
        DeprecationWarning,
        stacklevel=2,
    )
    module.configure_sharded_model()  # type: ignore[attr-defined]


def default_eval_checkpoint(trainer: Trainer, fn: str) -> str | None:
    """``validate()``/``test()``/``predict()`` after ``fit`` without a model: Lightning's default is the best
    checkpoint of the fit; without one this run keeps the weights in memory. Either way a warning says which."""
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "best_model_path", None):
        warnings.warn(
            f"`.{fn}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call will be "
            f"used ({callback.best_model_path}). You can pass `.{fn}(ckpt_path='best')` to use the best model or "
            f"`.{fn}(ckpt_path='last')` to use the last model. If you pass a value, this warning will be silenced.",
            UserWarning,
            stacklevel=4,
        )
        return "best"
    warnings.warn(
        f"`.{fn}(ckpt_path=None)` was called without a model and the previous `fit` saved no checkpoint "
        f"({'no ModelCheckpoint' if callback is None else 'its ModelCheckpoint has no best model'}): the weights "
        "in memory, as the fit left them, are used. Pass ckpt_path= to load a checkpoint, or the model to silence "
        "this warning.",
        UserWarning,
        stacklevel=4,
    )
    return None


class Loop(Training, Schedule, Evaluation):
    """Everything one stage binds once: the module, its wrapper, the step operations, the hooks to call."""

    def __init__(self, trainer: Trainer, stage: str, module: Module, datamodule: DataModule | None,
                 loaders: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.trainer, self.stage, self.module = trainer, stage, module
        self.given = loaders or {}
        self.train_loader: Any = None
        self.train_loaded_at: int | None = None
        trainer.state.fn, trainer.state.status = TrainerFn(stage), TrainerStatus.RUNNING
        trainer.state.stage = _FIRST_STAGE[stage]
        trainer.lightning_module, trainer.datamodule = module, datamodule
        trainer.ckpt_path = None
        trainer.should_stop = False
        for metrics in (trainer.callback_metrics, trainer.logged_metrics, trainer._progress_bar_metrics):
            metrics.clear()  # each stage starts without the previous one's metrics
        module.trainer = trainer
        if datamodule is not None:
            datamodule.trainer = trainer
        self.wrapped: Any = None
        self.ops: StepOps = None  # type: ignore[assignment]
        self.prepare_gradients: Any = None
        self.handles: list[_optim.LightningOptimizer] = []
        self.resume: _state.Resume | None = None
        self.step_taken = True
        self.heartbeat: _heartbeat.Heartbeat | None = None
        self.stop_check: _stopping.StopCheck | None = None
        self.current_hook: str | None = None  # the step or hook running now: where self.log may log, and how
        self.eval_steps_logged: dict[int, int] = collections.defaultdict(int)  # per dataloader, for the stage
        self.replacement_plan: Any = None  # an evaluation's data loaded again by a search in its start hook
        trainer._loop = self  # from here on, what self.log checks is this stage's (not the previous one's)
        self.current_hook = "configure_callbacks"
        try:
            _attach_model_callbacks(trainer, module)
        finally:
            self.current_hook = None
        self._bind_user_hooks()

    # ==================================================================================================== hooks
    def _bind_user_hooks(self) -> None:
        """For each hook name: the callbacks' and the module's implementations, found once (instance ones too)."""
        callbacks, module = self.trainer.callbacks, self.module
        names = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]
        # (callback, bound hook) pairs: a Mock callback's hooks have no __self__ to find the callback by
        self.callback_hooks = {n: [(c, getattr(c, n)) for c in callbacks if overrides(c, n, Callback)] for n in names}
        self.module_hooks = {
            n: getattr(module, n) for n in dir(Module) if _is_hook_name(n) and overrides(module, n, Module)
        }
        _profiling.wrap_hooks(self)

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

    def call_module(self, name: str, *args: Any) -> Any:
        """The module's hook ``name(*args)`` (timed when profiled and overridden), marked as running (``self.log``
        checks where it is called)."""
        method = self.module_hooks.get(name) or getattr(self.module, name)
        previous, self.current_hook = self.current_hook, name
        try:
            return method(*args)
        finally:
            self.current_hook = previous

    def overridden(self, *names: str) -> bool:
        return any(self.callback_hooks.get(n) or n in self.module_hooks for n in names)

    # ==================================================================================================== setup
    def setup(self) -> None:
        trainer, hook, module = self.trainer, self.trainer.hook, self.module
        _config.check(trainer, module, self.stage, self.given)
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
        self._start_experiments()
        trainer.profiler._lightning_module = module  # PyTorchProfiler labels its layers and counts its steps
        # as in Lightning: no rank in a single process's report names
        local_rank = trainer.local_rank if trainer.world_size > 1 else None
        trainer.profiler.setup(stage=self.stage, local_rank=local_rank, log_dir=trainer.log_dir)
        datamodule = trainer.datamodule
        if trainer.local_rank == 0:
            if datamodule is not None:
                _profiling.call_datamodule(trainer, "prepare_data")
            module.prepare_data()
        trainer.barrier("prepare_data")
        if datamodule is not None:
            _profiling.call_datamodule(trainer, "setup", stage=self.stage)
        self.call("setup", self.stage)
        with init_module(trainer):  # layers made here get the precision's dtype and device, as in Lightning
            configure_model(module)

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
            if module.automatic_optimization and (len(trainer.optimizers) > 1 or _optim.takes_optimizer_idx(module)):
                raise _optim.MultipleOptimizersError(module)
        optimizers = trainer.optimizers or ([_optim.NoOptimizer()] if self.stage == "fit" else [])
        self.handles = trainer._optimizer_handles = [_optim.LightningOptimizer(opt, self) for opt in optimizers]
        self.wrapped = hook.torchplug_wrap_module(trainer=trainer, module=step_module)
        ops = hook.torchplug_step_ops(trainer=trainer)
        self.ops = _profiling.profiled_ops(trainer, ops.traced(_plugins.trace) if _plugins.tracing() else ops)
        # what a step calls between the closure and the optimizer's step; None when nothing is to be done
        self.prepare_gradients = None if self.ops.prepare_gradients is _step._nothing else self.ops.prepare_gradients
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

    def _start_experiments(self) -> None:
        """Create each logger's experiment before the ``setup`` hooks, so that its name, version and run exist when
        user code reads them. A ``WandbLogger`` goes first: ``wandb.init`` must precede the TensorBoard writers for
        ``sync_tensorboard`` to see them."""
        from torchplug.loggers import WandbLogger

        if not self.trainer.is_global_zero:
            return
        for logger in sorted(self.trainer.loggers, key=lambda logger: not isinstance(logger, WandbLogger)):
            if hasattr(logger, "experiment"):
                _ = logger.experiment

    def _bind_batch_preparation(self) -> None:
        """``prepare(batch, dataloader_idx)``: the transfer hooks around the run's ``to_device`` (the datamodule's
        where it overrides one, else the module's)."""
        module, to_device, datamodule = self.module, self.ops.to_device, self.trainer.datamodule
        from torchplug.module import DataModule

        def hook(name: str) -> Any:
            if datamodule is not None and overrides(datamodule, name, DataModule):
                return getattr(datamodule, name)
            return self.module_hooks.get(name)

        before, transfer, after = (hook(n) for n in ("on_before_batch_transfer", "transfer_batch_to_device",
                                                      "on_after_batch_transfer"))  # fmt: skip
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
                _profiling.call_datamodule(trainer, "teardown", stage=self.stage)
            self.call("teardown", self.stage)
        # Release the strategy's wrapper (DistributedDataParallel) before the process group may go: a wrapper
        # that outlives it is destroyed at interpreter exit, when gloo's threads may already be gone.
        self.wrapped = None
        trainer.hook.torchplug_teardown(trainer=trainer)
        trainer.training = False
        trainer._results = None
        trainer.profiler.describe()
        trainer.profiler.teardown(stage=self.stage)
        trainer.profiler._lightning_module = None
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
    # ---------------------------------------------------------------------------------------------------- optimization
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
        self.write_logs(trainer._results.pop_step_metrics())

    def _batches_stepped(self) -> int:
        """Lightning's step for the loggers: training batches that ended in an optimizer step (every batch with
        manual optimization, where one batch may step several optimizers)."""
        trainer = self.trainer
        return trainer.global_step if self.module.automatic_optimization else trainer.progress.total_batches

    def write_eval_step_logs(self, dataloader_idx: int) -> None:
        """``self.log(..., on_step=True)`` in evaluation: written each batch, at the loader's own running count of
        the batches that logged."""
        self.write_logs(self.trainer._results.pop_step_metrics(), step=self.eval_steps_logged[dataloader_idx])
        self.eval_steps_logged[dataloader_idx] += 1

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
            # "_class_path": LightningCLI's record of each one's class, which differ by nature
            shared = (mine.keys() & theirs.keys()) - {"_class_path"}
            clashing = [k for k in shared if not _same_hparam(mine[k], theirs[k])]
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
        if hparams is not None:  # the class LightningCLI recorded is not a hyperparameter to log
            hparams = {k: v for k, v in hparams.items() if k != "_class_path"}
        for logger in trainer.loggers:
            if hparams is not None:
                logger.log_hyperparams(hparams)
            if callable(getattr(logger, "log_graph", None)):  # a logger-like object may have none
                logger.log_graph(module)
            logger.save()

    def write_logs(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Read logged values to the host at a logging point, with the plugins' metrics, and send them out as
        ``logger.log_metrics(metrics=..., step=...)``. Without ``step``: a logged ``"step"`` value, else the index of
        the last optimizer step (in ``fit``) or the step count (in evaluation stages), with ``"epoch"`` added."""
        trainer = self.trainer
        for answer in trainer.hook.torchplug_metrics(trainer=trainer):
            if answer:
                metrics.update(answer)
        if not metrics:
            return
        trainer.logged_metrics.update(metrics)
        if not (trainer.is_global_zero and trainer.loggers):
            return
        values = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        if step is None:
            logged_step = values.pop("step", None)
            if logged_step is not None:
                step = int(logged_step)
            else:
                values.setdefault("epoch", trainer.current_epoch)
                step = max(self._batches_stepped() - 1, 0) if self.stage == "fit" else self._batches_stepped()
        for logger in trainer.loggers:
            logger.log_metrics(metrics=values, step=step)


def _is_hook_name(name: str) -> bool:
    return name.startswith("on_") or name in (
        "setup", "teardown", "backward", "configure_gradient_clipping", "transfer_batch_to_device", "optimizer_step",
        "optimizer_zero_grad",
    )  # fmt: skip


def _same_hparam(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a is b
    return bool(a == b)


def _attach_model_callbacks(trainer: Trainer, module: Module) -> None:
    """``configure_callbacks``: the module's callbacks replace the trainer's of the same type (or a parent type),
    the others are added; checkpoints stay last. Lightning asks before ``prepare_data``, at every stage."""
    returned = module.configure_callbacks()
    if not returned:
        return
    given = list(returned) if isinstance(returned, (list, tuple)) else [returned]
    for callback in given:
        if not isinstance(callback, Callback):
            raise MisconfigurationError(
                f"{type(module).__name__}.configure_callbacks() returned {callback!r}, which is not a torchplug.Callback"
            )
    replaced = {type(c) for c in trainer.callbacks if type(c) is not Callback and any(isinstance(m, type(c)) for m in given)}
    if replaced:
        log.info(
            "The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks "
            "passed to Trainer: %s", ", ".join(sorted(t.__name__ for t in replaced)),
        )  # fmt: skip
    from torchplug.callbacks import ModelCheckpoint

    kept = [c for c in trainer.callbacks if type(c) not in replaced] + given
    trainer.callbacks = [c for c in kept if not isinstance(c, ModelCheckpoint)] + [
        c for c in kept if isinstance(c, ModelCheckpoint)
    ]
