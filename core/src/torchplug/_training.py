"""The training loop of ``fit`` (part of :class:`torchplug._loop.Loop`; when to load data, validate and stop is in
:mod:`torchplug._schedule`). Per batch it calls only the run's :class:`~torchplug.StepOps` and the user's hooks::

    batch = to_device(batch)
    module.optimizer_step(epoch, batch_idx, optimizer, closure)   # -> optimizer.step(closure=closure)
    closure: output = forward("train", (batch, batch_idx)); zero_grad; backward(loss)
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _data, _flags, _optim, _profiling, _state, _step, _stopping
from torchplug._errors import MisconfigurationError, PossibleUserWarning
from torchplug._results import Results

if TYPE_CHECKING:
    from torchplug._loop import Loop

log = logging.getLogger("torchplug")
_TRAIN_FETCH = "[_TrainingEpochLoop].train_dataloader_next"  # a batch fetch, by its name in profiles


class Training:
    """``fit`` for :class:`torchplug._loop.Loop`."""

    def fit(self, loaders: dict[str, Any]) -> None:
        trainer, module = self.trainer, self.module
        _flags.resolve_max_epochs(trainer)
        self.val_plan, self.val_loaded_at = None, None
        self.val_enabled = self._validation_configured()
        self._bind_training_step()
        self.call("on_fit_start")
        if trainer.checkpoint_callbacks:  # this run will save: find state a checkpoint cannot hold now, not then
            _state.check_saveable(trainer)
        self._log_hyperparams()
        if trainer.num_sanity_val_steps and self.val_enabled:
            rng = _state.get_rng_states(trainer)
            self._sanity_check()  # it neither changes the random state nor leaves metrics behind
            _state.set_rng_states(trainer, rng)
        if self.resume is not None:
            _state.set_rng_states(trainer, self.resume.rng_states)
            trainer.callback_metrics.update(self.resume.callback_metrics)  # the sanity check cleared them
        trainer._results = Results(trainer, training=True)
        if self.train_loader is None:  # estimated_stepping_batches may have asked for it already
            self.load_train_data()
        self.val_check_batch = self._val_check_batch()
        trainer.training = True
        in_eval = [name or type(module).__name__ for name, m in module.named_modules() if not m.training]
        if in_eval:  # left as the user set them (a frozen submodule stays in eval), as in Lightning
            warnings.warn(
                f"Found {len(in_eval)} module(s) in eval mode at the start of training ({', '.join(in_eval[:5])}"
                f"{', ...' if len(in_eval) > 5 else ''}). This may lead to unexpected behavior during training. If "
                "this is intentional, you can ignore this warning.",
                PossibleUserWarning,
                stacklevel=2,
            )
        self.train_started = self.last_val_time = time.monotonic()
        self.call("on_train_start")
        while not self._fit_done():
            if self._should_reload_train():
                self.load_train_data()
                self.val_check_batch = self._val_check_batch()
            if not trainer.num_training_batches:  # limit_train_batches=0: no training
                break
            self._train_epoch()
            # A stop asked for during the epoch's last batch lands here, after the epoch ended (and saved)
            if not self._fit_done() and self.stop_check.agree():
                raise self.stop_check.stop()
        self.call("on_train_end")
        self.call("on_fit_end")

    def _train_epoch(self) -> None:
        """One training epoch, or what a checkpoint left of it (see :class:`Progress`)."""
        trainer, module, progress = self.trainer, self.module, self.trainer.progress
        resume, self.resume = self.resume, None
        _data.set_epoch(self.train_loader.flattened, trainer.current_epoch)
        source = _profiling.fetched(trainer, _data.batches_of(self.train_loader), _TRAIN_FETCH)
        if self.train_takes_iterator:
            batches = _data.iterator_steps(source, trainer.num_training_batches, self.prepare)
        else:
            batches = _data.with_is_last(source, trainer.num_training_batches)
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
            with _profiling.action(trainer, "run_training_epoch"):
                self._train_batches(batches)
            progress.phase = "validated"
        # Lightning's order: callbacks, then the module (whose epoch-end logs count for this epoch), then callbacks
        # that monitor metrics (checkpoints, early stopping), which so see the whole epoch, then ReduceLROnPlateau
        # schedulers (the other epoch schedulers stepped after the epoch's last batch), when the epoch was complete.
        results = trainer._results
        results.dataloader_idx = None
        results.new_batch(None)
        epoch_logs = results.epoch_end()
        self.call("on_train_epoch_end", monitors=False)
        epoch_logs.update(results.epoch_end())
        results.reset_metric_states()
        progress.phase = "complete"
        self.call("on_train_epoch_end", monitors=True)
        if module.automatic_optimization and self._epoch_complete():
            _optim.step_schedulers(self, "epoch", plateau=True)
        self.write_logs(epoch_logs)
        trainer.current_epoch += 1
        progress.batches_done, progress.phase = 0, "train"

    def _train_batches(self, batches: Any) -> None:
        trainer, progress, ops = self.trainer, self.trainer.progress, self.ops
        step, check_val = self.training_step, self.val_enabled
        on_batch_end = None if ops.on_batch_end is _step._nothing else ops.on_batch_end  # no call for nothing
        reads_iterator, automatic = self.train_takes_iterator, self.module.automatic_optimization
        if reads_iterator:  # the step reads (and prepares) the batches itself; the hooks get what it read last
            prepare: Any = lambda batch: batch  # noqa: E731
        else:
            prepare = functools.partial(self.prepare, dataloader_idx=0) if self.transfer_hooks else ops.to_device
        start_hooks, end_hooks = self.overridden("on_train_batch_start"), self.overridden("on_train_batch_end")
        max_steps, log_every, log_each = trainer.max_steps, trainer.log_every_n_steps, bool(trainer.fast_dev_run)
        time_limit = trainer._max_time_s
        schedulers = automatic and bool(trainer.lr_scheduler_configs)
        plateau_each_step = schedulers and any(c.interval == "step" and c.reduce_on_plateau
                                               for c in trainer.lr_scheduler_configs)  # fmt: skip
        results = trainer._results
        beat, stop_check = self.heartbeat, self.stop_check
        stop_due = stop_check.due
        # one process: a signal's request is an attribute read, not a call
        stop_request = None if stop_check.shared else _stopping._REQUEST
        for batch, is_last in batches:
            batch_idx = progress.batches_done
            trainer._is_last_batch = is_last
            batch = prepare(batch)
            stepped_before = trainer.global_step
            # results.new_batch, inline: a step's iterator is not read for a batch size
            results.batch, results._batch_size = (None if reads_iterator else batch), None
            if batch is None:  # as in Lightning: no step for it, the batch-end hooks see no output
                warnings.warn("train_dataloader yielded None. If this was on purpose, ignore this warning...",
                              UserWarning, stacklevel=2)  # fmt: skip
                output = None
            else:
                if start_hooks and self.call("on_train_batch_start", *(batch.last[:2] if reads_iterator else
                                                                        (batch, batch_idx))) == -1:  # fmt: skip
                    trainer._is_last_batch = True  # the rest of the epoch is skipped: the epoch ends here
                    if schedulers:
                        _optim.step_schedulers(self, "epoch", plateau=False)
                    break
                output = step(batch, batch_idx, is_last)
            if on_batch_end is not None:
                on_batch_end("train", batch_idx)
            progress.batches_done = batch_idx + 1
            progress.total_batches += 1
            if schedulers and self._epoch_complete():
                _optim.step_schedulers(self, "epoch", plateau=False)
            if end_hooks:
                self.call("on_train_batch_end", _detached(output), *(batch.last[:2] if reads_iterator else
                                                                      (batch, batch_idx)))  # fmt: skip
            stepped = trainer.global_step if automatic else progress.total_batches  # Loop._batches_stepped
            if stepped != self.last_logged_step and ((log_every and stepped % log_every == 0) or log_each):
                self._flush_step_logs()
            if check_val and self._val_due(batch_idx, is_last):
                self.validate_during_fit()
            if plateau_each_step and self.step_taken and trainer.global_step != stepped_before:
                _optim.step_schedulers(self, "step", plateau=True)
            if time_limit is not None and time.monotonic() - self.train_started >= time_limit:
                log.info("Time limit reached (max_time=%s). Signaling Trainer to stop.", trainer.max_time)
                trainer.should_stop = True
            if (max_steps != -1 and trainer.global_step >= max_steps) or (trainer.should_stop and self._min_reached()):
                break
            if beat is not None:
                beat()
            # A signal stops the run after an optimizer step, never inside an accumulation window.
            if trainer.global_step != stepped_before and not is_last and (
                stop_request.signum if stop_request is not None else stop_due()
            ):
                raise stop_check.stop()
        if reads_iterator and progress.batches_done and self._val_due(0, True):
            self.validate_during_fit()  # a step that reads the iterator itself: validation ends the epoch

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
        self.warned_none_loss = False
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
                "The closure hasn't been executed: "
                f"{type(self.module).__name__}.optimizer_step did not call optimizer.step(closure=optimizer_closure) "
                "(or optimizer_closure()), so the batch was not trained"
            )
        trainer.global_step += 1
        if self.step_taken and self.step_schedulers:
            _optim.step_schedulers(self, "step", plateau=False)
        return closure.output

    def _manual_step(self, batch: Any, batch_idx: int, is_last: bool) -> Any:
        self.current_hook = "training_step"
        return _optim.manual_output(self.ops.forward("train", self.step_args(batch, batch_idx, 0)))


class _Closure:
    """One micro-batch: forward, ``zero_grad`` (first of a window), backward. Returns the loss for the optimizer."""

    __slots__ = ("loop", "optimizer", "args", "batch_idx", "first_in_window", "calls", "output")

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.optimizer = loop.handles[0].optimizer if loop.handles else None
        self.args: tuple[Any, ...] = ()
        self.batch_idx, self.first_in_window, self.calls = 0, True, 0
        self.output: Any = None

    def __call__(self) -> torch.Tensor | None:
        loop = self.loop
        self.calls += 1
        self.output = output = loop.ops.forward("train", self.args)
        loss = output if type(output) is torch.Tensor else _optim.loss_of(output, loop)
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


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"].detach()}
    return output


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
