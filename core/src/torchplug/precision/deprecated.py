"""Lightning's precision class names from before 2.1 (``PrecisionPlugin``, ``HalfPrecisionPlugin``,
``DoublePrecisionPlugin``): the current classes under their old names, with a deprecation warning on creation, so
that code written for those versions ports by changing its imports. ``MixedPrecisionPlugin`` is in torchplug-amp."""

from __future__ import annotations

import warnings
from typing import Any

from torchplug.precision import Precision
from torchplug.precision.true import DoublePrecision, HalfPrecision
from torchplug.utilities import LightningDeprecationWarning


def warn_renamed(old: str, new: str) -> None:
    """The warning of a precision class created under its pre-2.1 name ``old`` (``new`` is today's)."""
    warnings.warn(
        f"The `{old}` is deprecated. Use `{new}` instead (same arguments).",
        LightningDeprecationWarning,
        stacklevel=3,
    )


class PrecisionPlugin(Precision):
    """Deprecated name of :class:`~torchplug.precision.Precision`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warn_renamed("PrecisionPlugin", "torchplug.precision.Precision")
        super().__init__(*args, **kwargs)


class HalfPrecisionPlugin(HalfPrecision):
    """Deprecated name of :class:`~torchplug.precision.HalfPrecision`."""

    def __init__(self, precision: str = "16-true") -> None:
        warn_renamed("HalfPrecisionPlugin", "torchplug.precision.HalfPrecision")
        super().__init__(precision)


class DoublePrecisionPlugin(DoublePrecision):
    """Deprecated name of :class:`~torchplug.precision.DoublePrecision`."""

    def __init__(self) -> None:
        warn_renamed("DoublePrecisionPlugin", "torchplug.precision.DoublePrecision")
        super().__init__()


__all__ = ["DoublePrecisionPlugin", "HalfPrecisionPlugin", "PrecisionPlugin", "warn_renamed"]
