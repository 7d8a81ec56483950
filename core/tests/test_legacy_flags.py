import pytest

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET


def test_num_processes_maps_to_cpu_devices():
    with pytest.warns(DeprecationWarning, match=r"accelerator='cpu', devices=1"):
        trainer = Trainer(num_processes=1, **QUIET)
    assert trainer.accelerator_name == "cpu" and trainer.device_ids == [0]


def test_gpus_zero_is_the_cpu():
    with pytest.warns(DeprecationWarning, match="accelerator='gpu'"):
        trainer = Trainer(gpus=0, **QUIET)
    assert trainer.accelerator_name == "cpu"


def test_nb_gpu_nodes_maps_to_num_nodes():
    with pytest.warns(DeprecationWarning, match="num_nodes=1"):
        trainer = Trainer(accelerator="cpu", nb_gpu_nodes=1, **QUIET)
    assert trainer.num_nodes == 1


def test_distributed_backend_maps_to_strategy():
    with pytest.warns(DeprecationWarning, match="strategy='single_device'"):
        trainer = Trainer(accelerator="cpu", distributed_backend="single_device", **QUIET)
    assert trainer.strategy_name == "single_device"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gpus": 2, "accelerator": "cpu"},
        {"gpus": 2, "devices": 3},
        {"tpu_cores": 8, "accelerator": "cpu"},
        {"num_processes": 2, "accelerator": "gpu"},
        {"distributed_backend": "ddp", "strategy": "dp"},
        {"nb_gpu_nodes": 2, "num_nodes": 3},
        {"use_amp": True, "precision": "bf16-true"},
    ],
)
def test_contradictions_fail_clearly(kwargs):
    with pytest.warns(DeprecationWarning), pytest.raises(MisconfigurationError, match="contradicts"):
        Trainer(**kwargs, **QUIET)


def test_unknown_amp_backend():
    with pytest.raises(MisconfigurationError, match="amp_backend='fast'"):
        Trainer(amp_backend="fast", **QUIET)
