"""Module.to_torchscript / to_onnx: export works on a module that never met a Trainer, as in Lightning."""

import importlib.util

import pytest
import torch
from torch import nn

from torchplug import Module
from torchplug.testing import BoringModel
from torchplug.utilities import LightningDeprecationWarning


class Inner(Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x):
        return self.layer(x)


class Outer(Module):
    """A Module holding Modules: every one of them is read by torch.jit."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(Inner(), nn.ReLU())
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.inner(x))


@pytest.mark.parametrize("method", ["script", "trace"])
def test_to_torchscript_without_a_trainer(tmp_path, method):
    model = Outer()
    model.example_input_array = torch.randn(3, 4)
    with pytest.warns(LightningDeprecationWarning, match="deprecated in v2.7 and will be removed in v2.8"):
        scripted = model.to_torchscript(file_path=tmp_path / "model.pt", method=method)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert model.training and model.dropout.training  # the original's mode is kept
    assert not scripted.training
    model.eval()
    x = torch.randn(3, 4)
    assert torch.allclose(scripted(x), model(x))
    assert torch.allclose(torch.jit.load(tmp_path / "model.pt")(x), model(x))
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):  # the exporting state is over
        _ = model.inner[0].trainer


def test_to_torchscript_trace_with_example_inputs_and_check_inputs():
    model = Inner()
    with pytest.deprecated_call():
        traced = model.to_torchscript(
            method="trace", example_inputs=torch.randn(1, 4), check_inputs=torch.randn(2, 4)
        )
    x = torch.randn(5, 4)
    assert torch.allclose(traced(x), model(x))


def test_to_torchscript_errors_name_what_to_pass():
    model = Inner()
    with pytest.deprecated_call(), pytest.raises(ValueError, match="only supports 'script' or 'trace'"):
        model.to_torchscript(method="compile")
    with pytest.deprecated_call(), pytest.raises(ValueError, match="requires either `example_inputs` or"):
        model.to_torchscript(method="trace")


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="to_onnx needs onnx")
def test_to_onnx_without_a_trainer(tmp_path):
    model = BoringModel()
    model.example_input_array = torch.randn(2, 4)
    model.to_onnx(tmp_path / "model.onnx", dynamo=False)
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert model.training


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="to_onnx needs onnx")
def test_to_onnx_needs_an_input():
    model = BoringModel()
    with pytest.raises(ValueError, match="neither `input_sample` nor `model.example_input_array`"):
        model.to_onnx("unused.onnx")
