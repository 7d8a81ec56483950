"""The loop's errors that point at the user's step: a loss that cannot be backpropagated."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


class ReturnsPerSampleLoss(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return (self(x) - y).pow(2).squeeze(1)  # one loss per sample, not reduced


class ReturnsDetachedLoss(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"loss": super().training_step(batch, batch_idx).detach()}


class ManualDetached(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            loss = self._loss(batch)
        self.manual_backward(loss)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (ReturnsPerSampleLoss(), r"^training_step returned a tensor of shape \(8,\) \(dtype float32, grad_fn=\w+\): "
                                 r"a loss must be one number .* has 8 elements; reduce it \(loss.mean\(\)"),
        (ReturnsDetachedLoss(), r"^training_step returned a dict whose 'loss' is a tensor of shape \(\) \(dtype float32, "
                                r"no grad_fn\): the loss does not require grad.*detached"),
        (ManualDetached(), r"^manual_backward\(loss\) in training_step got a tensor of shape \(\) .*no grad_fn\): "
                           r"the loss does not require grad"),
    ],
    ids=["non-scalar", "detached", "manual-detached"],
)
def test_a_loss_that_cannot_be_backpropagated_names_training_step(model: BoringModel, match: str) -> None:
    with pytest.raises(MisconfigurationError, match=match) as error:
        Trainer(**QUIET, max_steps=1).fit(model, regression_loader(16))
    assert isinstance(error.value.__cause__, RuntimeError)  # torch's own error stays attached
