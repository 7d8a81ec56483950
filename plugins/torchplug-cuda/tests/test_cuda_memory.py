"""``log_gpu_memory``: the metrics' names and values, when they are produced, and failing early when unreadable.

The driver's answers come through the plugin's seam (``driver([...])``, see conftest.py); on a GPU machine the
``gpu`` test at the end reads the real driver during a real fit.
"""

from __future__ import annotations

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError, World
from torchplug.testing import QUIET, BoringModel, regression_loader
from torchplug_cuda import _gpus
from torchplug_cuda._memory import memory_metrics

pytestmark = pytest.mark.filterwarnings("ignore:strategy='dp'")


def test_all_and_min_max_formats(gpu_state):
    states = [gpu_state(0, used=1000.0), gpu_state(1, used=3000.5), gpu_state(2, used=2000.0)]
    assert memory_metrics("all", states, [0, 2]) == {
        "gpu_id: 0/memory.used (MB)": 1000.0,
        "gpu_id: 2/memory.used (MB)": 2000.0,
    }
    assert memory_metrics("min_max", states, [0, 1, 2]) == {"min_gpu_mem": 1000.0, "max_gpu_mem": 3000.5}


def test_metrics_hook_reports_the_gpus_of_the_run_in_cuda_numbering(gpus, driver, gpu_state, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=2,3, ``devices=[1]`` is the driver's GPU 3: its memory is reported as GPU 1."""
    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    driver([gpu_state(0, used=1.0), gpu_state(1, used=2.0), gpu_state(2, used=3.0), gpu_state(3, used=4.0)])
    trainer = torchplug.Trainer(accelerator="gpu", devices=[1], log_gpu_memory="all", **QUIET)
    answers = [a for a in trainer.hook.torchplug_metrics(trainer=trainer) if a]
    assert answers == [{"gpu_id: 1/memory.used (MB)": 4.0}]


def test_min_max_through_the_trainer_kwarg(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0, used=10.0), gpu_state(1, used=30.0)])
    trainer = torchplug.Trainer(accelerator="gpu", devices=2, strategy="dp", log_gpu_memory="min_max", **QUIET)
    assert trainer.accelerator.torchplug_metrics(trainer=trainer) == {"min_gpu_mem": 10.0, "max_gpu_mem": 30.0}


def test_only_global_rank_zero_reads_memory(gpus, driver, gpu_state):
    gpus(1)
    calls = driver([gpu_state(0)])
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, log_gpu_memory="all", **QUIET)
    calls.clear()
    trainer.world = World(global_rank=1, local_rank=0, node_rank=1, world_size=2)  # the second node's process
    assert trainer.accelerator.torchplug_metrics(trainer=trainer) is None
    assert calls == []


def test_off_by_default_and_the_driver_is_not_asked(gpus, driver, gpu_state):
    gpus(1)
    calls = driver([gpu_state(0)])
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, **QUIET)
    assert trainer.accelerator.torchplug_metrics(trainer=trainer) is None
    assert calls == []


def test_unreadable_memory_fails_at_construction(gpus, monkeypatch):
    gpus(1)

    def broken(processes=True):
        raise _gpus.GPUQueryError("cannot read the GPUs' state: NVML failed (...) and nvidia-smi failed (...)")

    monkeypatch.setattr(_gpus, "query_gpus", broken)
    with pytest.raises(MisconfigurationError, match=r"log_gpu_memory='all': cannot read the GPUs' state"):
        torchplug.Trainer(accelerator="gpu", devices=1, log_gpu_memory="all", **QUIET)


def test_gpus_the_driver_cannot_map_fail_at_construction(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0)])
    with pytest.raises(MisconfigurationError, match=r"GPUs \[1\] of devices=\[0, 1\] cannot be read"):
        torchplug.Trainer(accelerator="gpu", devices=2, strategy="dp", log_gpu_memory="all", **QUIET)


@pytest.mark.gpu
@pytest.mark.xdist_group("gpu")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and its driver")
def test_memory_is_logged_at_the_logging_interval_on_a_gpu(tmp_path):
    trainer = torchplug.Trainer(
        accelerator="gpu", devices=1, max_steps=4, log_every_n_steps=2, log_gpu_memory="all",
        **{**QUIET, "default_root_dir": str(tmp_path)},
    )  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(n=64, batch_size=8))
    key = f"gpu_id: {trainer.device_ids[0]}/memory.used (MB)"
    assert trainer.logged_metrics[key] > 0
