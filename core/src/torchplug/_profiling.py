"""Binding a run's hooks to ``trainer.profiler``: done once per stage, and only when a profiler times anything.

Without a profiler the hook tables stay the plain bound methods: nothing per batch changes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torchplug.profilers import PassThroughProfiler

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug.trainer import Trainer


def _timed(profiler: Any, action: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with profiler.profile(action):
            return function(*args, **kwargs)

    return timed


def wrap_hooks(loop: Loop) -> None:
    """Time every callback and module hook under Lightning's action names (``[Callback]<state_key>.<hook>``,
    ``[LightningModule]<class>.<hook>``)."""
    profiler = loop.trainer.profiler
    if isinstance(profiler, PassThroughProfiler):
        return
    for name, pairs in loop.callback_hooks.items():
        loop.callback_hooks[name] = [(c, _timed(profiler, f"[Callback]{c.state_key}.{name}", f)) for c, f in pairs]
    module = type(loop.module).__name__
    for name, function in loop.module_hooks.items():
        loop.module_hooks[name] = _timed(profiler, f"[LightningModule]{module}.{name}", function)


def call_datamodule(trainer: Trainer, name: str, *args: Any, **kwargs: Any) -> Any:
    datamodule = trainer.datamodule
    with action(trainer, f"[LightningDataModule]{type(datamodule).__name__}.{name}"):
        return getattr(datamodule, name)(*args, **kwargs)


def action(trainer: Trainer, name: str) -> contextlib.AbstractContextManager[Any]:
    profiler = trainer.profiler
    return contextlib.nullcontext() if isinstance(profiler, PassThroughProfiler) else profiler.profile(name)
