"""``accelerator="gpu", strategy="dp"`` together, on a machine without a GPU.

The machine's GPUs are played through torchplug-cuda's seam (``torchplug_cuda.accelerator._cuda_device_count``);
everything else is the real Trainer with both installed packages. Nothing here touches CUDA.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError
from torchplug.testing import QUIET, BoringModel

accelerator_module = pytest.importorskip("torchplug_cuda.accelerator")
pytest.importorskip("torchplug_dp")


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Any:
    def set_count(n: int) -> None:
        monkeypatch.setattr(accelerator_module, "_cuda_device_count", lambda: n)

    return set_count


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_dp_over_two_gpus_is_one_process_and_recommends_ddp(gpus, accelerator):
    gpus(2)
    with pytest.warns(UserWarning, match=r"strategy='ddp' runs one process per GPU and is faster") as record:
        trainer = torchplug.Trainer(accelerator=accelerator, devices=2, strategy="dp", **QUIET)
    assert record[0].filename == __file__  # the warning points at the user's Trainer(...) line
    assert trainer.strategy_name == "dp" and trainer.device_ids == [0, 1]
    assert trainer.num_processes == 1 and trainer.world_size == 1


def test_dp_on_one_gpu_says_it_only_adds_work(gpus):
    gpus(1)
    with pytest.warns(UserWarning, match=r"on one GPU it only adds work"):
        torchplug.Trainer(accelerator="gpu", devices=1, strategy="dp", **QUIET)


def test_dp_refuses_several_nodes(gpus, monkeypatch):
    gpus(2)
    # what a multi-node job by hand sets, so that a cluster environment (torchplug-ddp's) has nothing to refuse
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"), ("NODE_RANK", "0")):
        monkeypatch.setenv(name, value)
    with pytest.raises(MisconfigurationError, match=r"strategy='dp' runs in one process on one machine, but num_nodes=2"):
        torchplug.Trainer(accelerator="gpu", devices=2, num_nodes=2, strategy="dp", **QUIET)


def test_batches_stay_on_the_host_for_the_scatter(gpus):
    """Both plugins wrap torchplug_step_ops and set ``to_device``; dp's wrapper unwinds after the accelerator's,
    so its choice (leave the batch where the loader put it) is the run's."""
    gpus(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = torchplug.Trainer(accelerator="gpu", devices=2, strategy="dp", **QUIET)
    trainer.root_device = torch.device("cuda", 0)  # what the accelerator's torchplug_root_device answers in setup
    ops = trainer.hook.torchplug_step_ops(trainer=trainer)
    batch = (torch.ones(4, 2), {"y": torch.zeros(4)})
    assert ops.to_device(batch) is batch


def test_manual_optimization_is_refused_before_anything_runs(gpus):
    gpus(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = torchplug.Trainer(accelerator="gpu", devices=2, strategy="dp", **QUIET)
    model = BoringModel()
    model.automatic_optimization = False
    trainer.lightning_module = model
    with pytest.raises(MisconfigurationError, match=r"strategy='dp' cannot run BoringModel with automatic_optimization"):
        trainer.hook.torchplug_wrap_module(trainer=trainer, module=torchplug.StepModule(model))
