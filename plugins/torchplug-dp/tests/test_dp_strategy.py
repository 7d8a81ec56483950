"""The dp strategy's hooks that do not need a GPU: refusing the CPU, leaving batches for the scatter, and
combining outputs (``*_step_end`` hooks, weighted means).

The combination tests set the wrapper's record of one forward (which outputs were per GPU, each GPU's share) as
a two-GPU forward would leave it; the GPU tests in tests/test_gpu_dp.py make it for real.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError, registry
from torchplug.testing import QUIET, BoringModel
from torchplug_dp import DataParallelStrategy
from torchplug_dp._parallel import DataParallel


def test_entry_point():
    backend = registry.find("strategy", "dp")
    assert backend.distribution == "torchplug-dp" and backend.load() is DataParallelStrategy


def test_the_cpu_is_refused_clearly():
    with pytest.raises(MisconfigurationError) as info:
        torchplug.Trainer(accelerator="cpu", strategy="dp", **QUIET)
    assert "strategy='dp' runs torch.nn.DataParallel, which needs CUDA GPUs" in str(info.value)
    assert "accelerator='cpu' was selected" in str(info.value) and "accelerator='gpu'" in str(info.value)


def test_batches_are_left_for_the_scatter_and_before_any_accelerator():
    strategy = DataParallelStrategy()
    batch = {"x": torch.ones(2)}
    assert strategy.torchplug_batch_to_device(trainer=None, batch=batch, device=torch.device("cuda", 0)) is batch
    assert DataParallelStrategy.torchplug_batch_to_device.torchplug_impl["tryfirst"] is True


class StepEnd(BoringModel):
    def __init__(self, answer: Any = "combined") -> None:
        super().__init__()
        self.answer, self.received = answer, []

    def training_step_end(self, outputs: Any) -> Any:
        self.received.append(outputs)
        return outputs["loss"].sum() if self.answer == "combined" else self.answer


@pytest.fixture
def recorded(tmp_path: Any) -> Any:
    """A strategy whose wrapper has just run a two-GPU forward with shares 3 and 1."""

    def make(module: Any) -> tuple[DataParallelStrategy, Any]:
        trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
        trainer.lightning_module = module
        strategy = DataParallelStrategy()
        strategy._module = DataParallel(torch.nn.Linear(1, 1), [0], trainer)
        strategy._module.per_replica, strategy._module.shares = {("loss",)}, [3, 1]
        return strategy, trainer

    return make


def test_per_gpu_losses_are_averaged_by_share(recorded):
    strategy, trainer = recorded(BoringModel())
    output = {"loss": torch.tensor([1.0, 4.0]), "preds": torch.zeros(4, 1)}
    combined = strategy.torchplug_step_output(trainer=trainer, stage="train", output=output)
    assert combined["loss"].item() == pytest.approx(1.75) and combined["preds"] is output["preds"]
    # consumed: the next step without per-GPU values is left to the default (unchanged)
    assert strategy.torchplug_step_output(trainer=trainer, stage="train", output=output) is None


def test_step_end_hooks_get_the_gathered_outputs_instead(recorded):
    module = StepEnd()
    strategy, trainer = recorded(module)
    output = {"loss": torch.tensor([1.0, 4.0])}
    assert strategy.torchplug_step_output(trainer=trainer, stage="train", output=output).item() == 5.0
    assert module.received == [output]


def test_a_training_step_end_returning_none_is_refused(recorded):
    strategy, trainer = recorded(StepEnd(answer=None))
    with pytest.raises(MisconfigurationError, match="training_step_end returned None; under strategy='dp'"):
        strategy.torchplug_step_output(trainer=trainer, stage="train", output={"loss": torch.tensor([1.0, 2.0])})


def test_evaluation_outputs_are_reduced_the_same_way(recorded):
    strategy, trainer = recorded(BoringModel())
    combined = strategy.torchplug_step_output(trainer=trainer, stage="validation", output={"loss": torch.tensor([2.0, 6.0])})
    assert combined["loss"].item() == pytest.approx(3.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks DataParallel's fallback on a machine without CUDA")
def test_without_cuda_the_wrapper_calls_the_module(tmp_path):
    trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
    model = BoringModel()
    wrapper = DataParallel(torchplug.StepModule(model), [0], trainer)
    x = torch.randn(4, 4)
    assert torch.equal(wrapper("predict", (x,), 0), model(x))
