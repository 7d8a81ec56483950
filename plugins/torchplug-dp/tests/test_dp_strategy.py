"""The dp strategy's hooks that do not need a GPU: refusing the CPU, leaving batches for the scatter, and
combining outputs (``*_step_end`` hooks, weighted means).

dp changes the run's step operations in its ``torchplug_step_ops`` wrapper: ``to_device`` leaves the batch on the
host and ``forward`` combines the per-GPU outputs. These tests drive that wrapper by hand (``through``) around the
core's default operations, whose ``forward`` here returns what it is given as the step's output. The combination
tests set the wrapper's record of one forward (which outputs were per GPU, each GPU's share) as a two-GPU forward
would leave it; the GPU tests in tests/test_gpu_dp.py make it for real.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError, StepOps, registry
from torchplug._step import default_step_ops
from torchplug.testing import QUIET, BoringModel
from torchplug_dp import DataParallelStrategy
from torchplug_dp._parallel import DataParallel


def through(plugin: Any, trainer: Any, ops: StepOps) -> StepOps:
    """What ``plugin``'s ``torchplug_step_ops`` wrapper makes of ``ops``, as pluggy would drive it."""
    wrapper = plugin.torchplug_step_ops(trainer=trainer)
    next(wrapper)
    with pytest.raises(StopIteration) as done:
        wrapper.send(ops)
    return done.value.value


def step_returning_its_argument(stage: str, output: Any, *rest: Any) -> Any:
    """Stands in for the wrapped module: the "step" returns the output it is given."""
    return output


def test_entry_point():
    backend = registry.find("strategy", "dp")
    assert backend.distribution == "torchplug-dp" and backend.load() is DataParallelStrategy


def test_the_cpu_is_refused_clearly():
    with pytest.raises(MisconfigurationError) as info:
        torchplug.Trainer(accelerator="cpu", strategy="dp", **QUIET)
    assert "strategy='dp' runs torch.nn.DataParallel, which needs CUDA GPUs" in str(info.value)
    assert "accelerator='cpu' computes on 'cpu'" in str(info.value) and "accelerator='gpu'" in str(info.value)
    assert "strategy='ddp_cpu'" in str(info.value)


def test_batches_are_left_for_the_scatter_whatever_the_accelerator_chose(tmp_path):
    """dp's step_ops wrapper unwinds after the accelerator's, so its ``to_device`` (leave the batch where the
    loader put it) replaces the accelerator's copy; the operations dp does not change are passed on as received."""
    assert DataParallelStrategy.torchplug_step_ops.torchplug_impl["wrapper"] is True
    trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
    trainer.root_device = torch.device("cpu")
    received = default_step_ops(trainer, step_returning_its_argument)
    received.to_device = lambda batch: pytest.fail("the accelerator's copy must not run under dp")
    kept = {name: getattr(received, name) for name in ("backward", "no_sync", "prepare_gradients", "clip_gradients",
                                                        "optimizer_step", "on_batch_end")}  # fmt: skip
    ops = through(DataParallelStrategy(), trainer, received)
    batch = {"x": torch.ones(2), "y": [torch.zeros(2)]}
    assert ops.to_device(batch) is batch
    assert {name: getattr(ops, name) for name in kept} == kept


class StepEnd(BoringModel):
    def __init__(self, answer: Any = "combined") -> None:
        super().__init__()
        self.answer, self.received = answer, []

    def training_step_end(self, outputs: Any) -> Any:
        self.received.append(outputs)
        return outputs["loss"].sum() if self.answer == "combined" else self.answer


@pytest.fixture
def recorded(tmp_path: Any) -> Any:
    """The run's ``forward`` under dp, whose wrapper has just run a two-GPU forward with shares 3 and 1.

    ``forward(stage, output)`` runs the "step" (which returns ``output``) and dp's combination of its per-GPU
    values.
    """

    def make(module: Any) -> Any:
        trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
        trainer.lightning_module = module
        trainer.root_device = torch.device("cpu")
        strategy = DataParallelStrategy()
        with mock.patch("torch.nn.parallel.data_parallel._get_available_device_type", lambda: None):
            strategy._module = DataParallel(torch.nn.Linear(1, 1), [0], trainer)  # on the CPU, even where CUDA is
        strategy._module.per_replica, strategy._module.shares = {("loss",)}, [3, 1]
        ops = through(strategy, trainer, default_step_ops(trainer, step_returning_its_argument))
        return lambda stage, output: ops.forward(stage, (output,))

    return make


def test_per_gpu_losses_are_averaged_by_share(recorded):
    forward = recorded(BoringModel())
    output = {"loss": torch.tensor([1.0, 4.0]), "preds": torch.zeros(4, 1)}
    combined = forward("train", output)
    assert combined["loss"].item() == pytest.approx(1.75) and combined["preds"] is output["preds"]
    # consumed: the next step without per-GPU values is passed on unchanged
    assert forward("train", output) is output


def test_step_end_hooks_get_the_gathered_outputs_instead(recorded):
    module = StepEnd()
    forward = recorded(module)
    output = {"loss": torch.tensor([1.0, 4.0])}
    assert forward("train", output).item() == 5.0
    assert module.received == [output]


def test_a_training_step_end_returning_none_is_refused(recorded):
    forward = recorded(StepEnd(answer=None))
    with pytest.raises(MisconfigurationError, match="training_step_end returned None; under strategy='dp'"):
        forward("train", {"loss": torch.tensor([1.0, 2.0])})


def test_evaluation_outputs_are_reduced_the_same_way(recorded):
    forward = recorded(BoringModel())
    combined = forward("validation", {"loss": torch.tensor([2.0, 6.0])})
    assert combined["loss"].item() == pytest.approx(3.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks DataParallel's fallback on a machine without CUDA")
def test_without_cuda_the_wrapper_calls_the_module(tmp_path):
    trainer = torchplug.Trainer(accelerator="cpu", devices=1, **{**QUIET, "default_root_dir": str(tmp_path)})
    model = BoringModel()
    wrapper = DataParallel(torchplug.StepModule(model), [0], trainer)
    x = torch.randn(4, 4)
    assert torch.equal(wrapper("predict", (x,), 0), model(x))
