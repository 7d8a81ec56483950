"""Binding a run's hooks to ``trainer.profiler``: done once per stage, and only when a profiler times anything.

Without a profiler the hook tables stay the plain bound methods: nothing per batch changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torchplug._states import RunningStage
from torchplug.profilers import PassThroughProfiler

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug._step import StepOps
    from torchplug.trainer import Trainer


def _timed(profiler: Any, action: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with profiler.profile(action):
            return function(*args, **kwargs)

    return timed


def wrap_hooks(loop: Loop) -> None:
    """Time every callback hook and the module's hooks under Lightning's action names
    (``[Callback]<state_key>.<hook>``, ``[LightningModule]<class>.<hook>``)."""
    profiler = loop.trainer.profiler
    if isinstance(profiler, PassThroughProfiler):
        return
    # as in Lightning, a profiled run calls every callback's every hook, so that the report lists them all
    callbacks = loop.trainer.callbacks
    for name in loop.callback_hooks:
        loop.callback_hooks[name] = [(c, _timed(profiler, f"[Callback]{c.state_key}.{name}", getattr(c, name)))
                                     for c in callbacks]  # fmt: skip
    module = type(loop.module).__name__
    for name, function in loop.module_hooks.items():
        loop.module_hooks[name] = _timed(profiler, f"[LightningModule]{module}.{name}", function)


_STEP_NAMES = {"train": "training_step", "validation": "validation_step", "test": "test_step",
               "predict": "predict_step"}  # fmt: skip


def profiled_ops(trainer: Trainer, ops: StepOps) -> StepOps:
    """The run's step operations with the batch transfer, the step and backward timed under Lightning's names
    (``[Strategy]<strategy class>.batch_to_device``, ``...training_step``, ``...backward``); ``ops`` itself without
    a profiler."""
    profiler = trainer.profiler
    if isinstance(profiler, PassThroughProfiler):
        return ops
    strategy = f"[Strategy]{type(trainer.strategy).__name__}"
    forward, backward = ops.forward, ops.backward
    actions = {stage: f"{strategy}.{name}" for stage, name in _STEP_NAMES.items()}

    def timed_forward(stage: str, args: tuple[Any, ...]) -> Any:
        with profiler.profile(actions[stage]):
            return forward(stage, args)

    return dataclasses.replace(
        ops,
        to_device=_timed(profiler, f"{strategy}.batch_to_device", ops.to_device),
        forward=timed_forward,
        backward=_timed(profiler, f"{strategy}.backward", backward),
    )


def fetched(trainer: Trainer, batches: Iterable[Any], action_name: str) -> Iterable[Any]:
    """``batches``, each ``next`` timed as ``action_name`` (Lightning's ``[_TrainingEpochLoop].train_dataloader_next``,
    ``[_EvaluationLoop].val_next``, ...: how long the step waited for data); ``batches`` itself without a profiler."""
    profiler = trainer.profiler
    if isinstance(profiler, PassThroughProfiler):
        return batches

    def timed() -> Iterator[Any]:
        iterator = iter(batches)
        while True:
            with profiler.profile(action_name):
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            yield batch

    return timed()


def eval_fetch_action(trainer: Trainer) -> str:
    """The action a batch fetch of the running evaluation is timed as, by Lightning's names."""
    stage = trainer.state.stage
    if stage == RunningStage.PREDICTING:
        return "[_PredictionLoop].predict_next"
    return f"[_EvaluationLoop].{stage.dataloader_prefix}_next"


def call_datamodule(trainer: Trainer, name: str, *args: Any, **kwargs: Any) -> Any:
    datamodule = trainer.datamodule
    with action(trainer, f"[LightningDataModule]{type(datamodule).__name__}.{name}"):
        return getattr(datamodule, name)(*args, **kwargs)


def action(trainer: Trainer, name: str) -> contextlib.AbstractContextManager[Any]:
    profiler = trainer.profiler
    return contextlib.nullcontext() if isinstance(profiler, PassThroughProfiler) else profiler.profile(name)
