"""The built-in precision plugins' Lightning API: HalfPrecision / DoublePrecision used directly and by the Trainer."""

import pickle

import pytest
import torch
from torch import nn

from torchplug import Module, Trainer
from torchplug.precision import DoublePrecision, HalfPrecision, Precision
from torchplug.testing import QUIET, BoringModel, regression_loader


@pytest.mark.parametrize(("precision", "dtype"), [("16-true", torch.float16), ("bf16-true", torch.bfloat16)])
def test_half_precision_used_directly(precision, dtype):
    plugin = HalfPrecision(precision=precision)
    assert plugin.precision == precision
    with plugin.module_init_context():
        assert torch.get_default_dtype() == dtype
        layer = nn.Linear(2, 2)
    assert layer.weight.dtype == dtype
    with plugin.forward_context():
        assert torch.zeros(1).dtype == dtype
    assert torch.get_default_dtype() == torch.float32
    converted = plugin.convert_module(nn.Linear(2, 2))
    assert converted.weight.dtype == converted.bias.dtype == dtype
    batch = plugin.convert_input({"x": torch.ones(2), "label": torch.ones(2, dtype=torch.long)})
    assert batch["x"].dtype == dtype and batch["label"].dtype == torch.long


def test_half_precision_refuses_other_precisions():
    with pytest.raises(ValueError, match=r"HalfPrecision\(precision='64-true'\).*'16-true' or 'bf16-true'"):
        HalfPrecision(precision="64-true")


def test_double_precision_used_directly():
    plugin = DoublePrecision()
    assert plugin.precision == "64-true"
    model = BoringModel()
    model, optimizers, schedulers = plugin.connect(model, [], [])
    pickle.dumps(model)
    assert plugin.convert_module(model).layer.weight.dtype == torch.float64
    with plugin.module_init_context():
        assert nn.Linear(2, 2).weight.dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32


class Configured(Module):
    """Layers made in configure_model, and a step checking the dtypes it computes in."""

    def __init__(self, dtype):
        super().__init__()
        self.expected = dtype

    def configure_model(self):
        self.layer = nn.Linear(4, 1)
        assert (
            self.layer.weight.dtype == self.expected
        )  # configure_model runs in the precision's init context
        if self.expected == torch.float64:  # complex numbers follow the default dtype: complex128
            self.register_buffer("phase", torch.complex(torch.zeros(2), torch.ones(2)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert x.dtype == self.expected and torch.zeros(1).dtype == self.expected
        return nn.functional.mse_loss(self.layer(x), y)

    def on_train_epoch_end(self):
        assert (
            torch.get_default_dtype() == torch.float32
        )  # hooks outside the step are not in the step's context

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    ("trainer_kwargs", "dtype", "complex_dtype"),
    [
        ({"precision": "64-true"}, torch.float64, torch.complex128),
        ({"precision": "bf16-true"}, torch.bfloat16, None),
        ({"plugins": [HalfPrecision("bf16-true")]}, torch.bfloat16, None),
    ],
)
def test_trainer_runs_configure_model_and_steps_in_the_precision(trainer_kwargs, dtype, complex_dtype):
    model = Configured(dtype)
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=2, **trainer_kwargs)
    trainer.fit(model, regression_loader(8, 4))
    assert trainer.precision == {torch.float64: "64-true", torch.bfloat16: "bf16-true"}[dtype]
    assert model.layer.weight.dtype == dtype
    if complex_dtype is not None:
        assert model.phase.dtype == complex_dtype


def test_clip_gradients_by_value_and_norm():
    plugin = Precision()
    layer = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.weight.grad = torch.full((1, 3), 10.0)
    layer.bias.grad = torch.full((1,), 10.0)
    plugin.clip_gradients(optimizer, clip_val=0.0)  # disabled: untouched
    assert layer.weight.grad.max() == 10.0
    plugin.clip_gradients(optimizer, clip_val=2.0, gradient_clip_algorithm="value")
    assert layer.weight.grad.max() == 2.0
    plugin.clip_gradients(optimizer, clip_val=1.0, gradient_clip_algorithm="norm")
    total = torch.cat([layer.weight.grad.flatten(), layer.bias.grad]).norm()
    assert torch.isclose(total, torch.tensor(1.0), atol=1e-4)
    with pytest.raises(ValueError, match="gradient_clip_algorithm='max'"):
        plugin.clip_gradients(optimizer, clip_val=1.0, gradient_clip_algorithm="max")
