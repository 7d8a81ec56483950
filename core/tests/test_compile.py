"""The Trainer takes torch.compile(model): the module trains, its forward and steps compiled; to_uncompiled undoes."""

import pytest
import torch

from torchplug import Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader
from torchplug.utilities import from_compiled, to_uncompiled


class Logging(BoringModel):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss["loss"] if isinstance(loss, dict) else loss)
        return loss


def test_fit_and_test_a_compiled_module():
    model = Logging()
    before = model.layer.weight.detach().clone()
    compiled = torch.compile(model, backend="eager")  # real dynamo tracing; no C compiler needed
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=2)
    trainer.fit(compiled, regression_loader(16, 8))
    assert trainer.lightning_module is model
    assert "loss" in trainer.callback_metrics  # self.log inside the compiled step
    assert not torch.equal(model.layer.weight, before)  # the original module's parameters were trained
    assert "forward" in model.__dict__ and "training_step" in model.__dict__  # compiled on the instance
    trainer.test(compiled, regression_loader(8, 8))

    assert to_uncompiled(compiled) is model
    assert "forward" not in model.__dict__ and "training_step" not in model.__dict__
    with pytest.raises(ValueError, match="Found a non-compiled LightningModule"):
        to_uncompiled(model)


def test_from_compiled_names_what_it_was_given():
    with pytest.raises(ValueError, match="required to be an `OptimizedModule`.*Found a `BoringModel`"):
        from_compiled(BoringModel())
    with pytest.raises(ValueError, match="compiled LightningModule.*Found a `Linear`"):
        from_compiled(torch.compile(torch.nn.Linear(2, 2), backend="eager"))
