"""MixedPrecision with Lightning's signature, MixedPrecision(precision, device, scaler), used directly."""

import re

import pytest
import torch
from torch import nn

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET
from torchplug_amp import BF16MixedPrecision, MixedPrecision


def test_one_class_for_both_mixed_precisions():
    half = MixedPrecision("16-mixed", "cpu")
    assert (half.precision, half.device, half.dtype, half.compute_dtype) == (
        "16-mixed",
        "cpu",
        *[torch.float16] * 2,
    )
    bf16 = MixedPrecision(precision="bf16-mixed", device="cpu")
    assert bf16.scaler is None and bf16.compute_dtype == torch.bfloat16
    context = bf16.autocast_context_manager()
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert isinstance(BF16MixedPrecision(), MixedPrecision) and BF16MixedPrecision().precision == "bf16-mixed"


@pytest.mark.parametrize("given", ["16", 16, "32-true", "bf16-true"])
def test_other_precisions_are_refused_by_name(given):
    expected = f"Passed `MixedPrecision(precision={given!r})`. Precision must be '16-mixed' or 'bf16-mixed'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        MixedPrecision(given, "cpu")
    with pytest.raises(MisconfigurationError, match="bfloat16 needs no loss scale"):
        MixedPrecision("bf16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def test_autocast_keeps_gradients_outside_no_grad():
    layer = nn.Linear(2, 1)
    with MixedPrecision("bf16-mixed", "cpu").autocast_context_manager():
        with torch.no_grad():
            layer(torch.randn(1, 2))
        loss = layer(torch.randn(1, 2)).mean()
    loss.backward()
    assert loss.grad_fn is not None and layer.weight.grad is not None


def test_clipping_refuses_an_optimizer_that_unscales_itself():
    layer = nn.Linear(2, 1)
    layer(torch.randn(4, 2)).sum().backward()
    fused = torch.optim.Adam(layer.parameters(), fused=True)
    assert fused._step_supports_amp_scaling  # torch's flag: the optimizer unscales inside step()
    plugin = MixedPrecision("16-mixed", "cpu")
    plugin.clip_gradients(fused, clip_val=0.0)  # clipping disabled: nothing to refuse
    with pytest.raises(
        RuntimeError, match=r"The current optimizer, Adam, does not allow for gradient clipping"
    ):
        plugin.clip_gradients(fused, clip_val=1.0)
    plain = torch.optim.SGD(layer.parameters(), lr=0.1)
    plugin.clip_gradients(plain, clip_val=1e-3, gradient_clip_algorithm="value")
    assert layer.weight.grad.abs().max() <= 1e-3


@pytest.mark.parametrize(
    ("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)]
)
def test_an_instance_in_plugins_runs_the_trainer(precision, dtype):
    plugin = MixedPrecision(precision, "cpu")
    trainer = Trainer(accelerator="cpu", plugins=[plugin], **QUIET)
    assert trainer.precision_plugin is plugin and trainer.precision == precision
    with pytest.raises(MisconfigurationError, match=r"MixedPrecision\(device='meta'\) autocasts on 'meta'"):
        Trainer(accelerator="cpu", plugins=[MixedPrecision(precision, "meta")], **QUIET)
    assert Trainer(accelerator="cpu", precision=precision, **QUIET).precision_plugin.compute_dtype == dtype
