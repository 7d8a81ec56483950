"""Lightning's pre-2.1 precision class names: the current classes, with a deprecation warning on creation."""

from __future__ import annotations

import pytest
import torch

from torchplug.precision import (
    DoublePrecision,
    DoublePrecisionPlugin,
    HalfPrecision,
    HalfPrecisionPlugin,
    Precision,
    PrecisionPlugin,
)
from torchplug.utilities import LightningDeprecationWarning


@pytest.mark.parametrize(
    ("old", "new", "kwargs"),
    [(PrecisionPlugin, Precision, {}), (HalfPrecisionPlugin, HalfPrecision, {"precision": "bf16-true"}),
     (DoublePrecisionPlugin, DoublePrecision, {})],
)  # fmt: skip
def test_old_names_warn_and_are_the_current_classes(old, new, kwargs):
    with pytest.warns(
        LightningDeprecationWarning, match=rf"The `{old.__name__}` is deprecated. Use `.*{new.__name__}`"
    ):
        plugin = old(**kwargs)
    assert isinstance(plugin, new)
    if new is HalfPrecision:
        assert plugin.dtype is torch.bfloat16


def test_mixed_precision_plugin_is_mixed_precision():
    amp = pytest.importorskip("torchplug_amp")
    with pytest.warns(LightningDeprecationWarning, match="The `MixedPrecisionPlugin` is deprecated"):
        plugin = amp.MixedPrecisionPlugin(precision="bf16-mixed", device="cpu")
    assert isinstance(plugin, amp.MixedPrecision) and plugin.precision == "bf16-mixed"
