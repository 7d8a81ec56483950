"""``Trainer(profiler=...)``: a profiler's name, a Profiler, or None."""

from __future__ import annotations

from typing import Any

from torchplug._errors import MisconfigurationError
from torchplug.profilers._advanced import AdvancedProfiler
from torchplug.profilers._base import PassThroughProfiler, Profiler
from torchplug.profilers._pytorch import PyTorchProfiler
from torchplug.profilers._simple import SimpleProfiler

PROFILERS: dict[str, type[Profiler]] = {
    "simple": SimpleProfiler,
    "advanced": AdvancedProfiler,
    "pytorch": PyTorchProfiler,
}


def make_profiler(profiler: Any) -> Profiler:
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str):
        chosen = PROFILERS.get(profiler.lower())
        if chosen is None:
            raise MisconfigurationError(
                "When passing string value for the `profiler` parameter of `Trainer`, it can only be one of "
                f"{list(PROFILERS)}; got profiler={profiler!r} (or pass a torchplug.profilers.Profiler)"
            )
        return chosen()
    raise MisconfigurationError(
        f"Trainer(profiler={profiler!r}): expected one of {list(PROFILERS)}, a torchplug.profilers.Profiler or None"
    )
