"""The cuda accelerator on a machine without a GPU: selection, device parsing, errors and flags.

Where a test needs GPUs to exist, it plays a machine with N of them through the plugin's seam
(``gpus(n)`` replaces ``torchplug_cuda.accelerator._cuda_device_count``, see conftest.py); nothing in these tests
touches CUDA itself.
"""

from __future__ import annotations

import os

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError, registry
from torchplug.testing import QUIET
from torchplug_cuda import CUDAAccelerator

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour on a machine without CUDA")
dp_warning = pytest.mark.filterwarnings("ignore:strategy='dp'")


def test_entry_points_name_cuda_and_its_alias_gpu():
    backend = registry.find("accelerator", "gpu")
    assert backend.name == "cuda" and backend.aliases == ("gpu",)
    assert backend.distribution == "torchplug-cuda"
    assert backend.load() is CUDAAccelerator
    assert CUDAAccelerator.priority == 100


@no_cuda
@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_gpu_without_a_gpu_fails_clearly(name):
    assert not CUDAAccelerator.is_available()
    assert CUDAAccelerator.device_count() == 0
    with pytest.raises(MisconfigurationError) as info:
        torchplug.Trainer(accelerator=name, **QUIET)
    message = str(info.value)
    assert "needs an NVIDIA GPU" in message and "torch.cuda.is_available() is False" in message
    assert "CPU-only build" in message or "no GPU" in message
    assert "accelerator='cpu'" in message


@no_cuda
def test_gpu_hidden_by_cuda_visible_devices_is_named(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(MisconfigurationError, match="no GPU is visible with CUDA_VISIBLE_DEVICES=''"):
        CUDAAccelerator()


@no_cuda
def test_auto_picks_the_cpu_without_a_gpu():
    assert torchplug.Trainer(accelerator="auto", **QUIET).accelerator_name == "cpu"


def test_auto_prefers_cuda_when_a_gpu_is_visible(gpus):
    gpus(2)
    assert CUDAAccelerator.is_available() and CUDAAccelerator.device_count() == 2
    trainer = torchplug.Trainer(accelerator="auto", devices=1, **QUIET)
    assert trainer.accelerator_name == "cuda"
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    assert trainer.hook.torchplug_device_count(trainer=trainer) == 2


@dp_warning
@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        (3, [0, 1, 2]),
        (-1, [0, 1, 2, 3]),
        ([1, 3], [1, 3]),
        ("3", [0, 1, 2]),
        ("1, 3", [1, 3]),
        ("-1", [0, 1, 2, 3]),
        ("auto", [0, 1, 2, 3]),
        (1, [0]),
        ([2], [2]),
    ],
)
def test_devices_table_on_a_four_gpu_machine(gpus, devices, expected):
    gpus(4)
    strategy = "auto" if len(expected) == 1 else "dp"
    trainer = torchplug.Trainer(accelerator="gpu", devices=devices, strategy=strategy, **QUIET)
    assert trainer.device_ids == expected


def test_devices_the_machine_lacks_are_refused(gpus):
    gpus(1)
    with pytest.raises(MisconfigurationError, match=r"requested (cuda|gpu) devices \[1\] but this machine has \[0\]"):
        torchplug.Trainer(accelerator="gpu", devices=[1], **QUIET)
    with pytest.raises(MisconfigurationError, match=r"devices='0, 2'"):
        torchplug.Trainer(accelerator="gpu", devices="0, 2", **QUIET)


def test_legacy_gpus_flag_selects_this_accelerator(gpus):
    gpus(2)
    with pytest.warns(DeprecationWarning):
        trainer = torchplug.Trainer(gpus=[1], **QUIET)
    assert trainer.accelerator_name == "cuda" and trainer.device_ids == [1]


def test_root_device_refuses_a_local_rank_without_a_gpu(gpus):
    gpus(2)
    trainer = torchplug.Trainer(accelerator="gpu", devices=[1], **QUIET)
    trainer.local_rank = 1
    with pytest.raises(MisconfigurationError, match=r"devices=\[1\] gives 1 GPU\(s\) per node.*local rank 1"):
        trainer.accelerator.torchplug_root_device(trainer=trainer)


def test_batch_to_device_is_left_to_others_for_a_non_cuda_device(gpus):
    gpus(1)
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, **QUIET)
    batch = {"x": torch.ones(2)}
    assert trainer.accelerator.torchplug_batch_to_device(trainer=trainer, batch=batch, device=torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_gpu_memory": "max"}, r"log_gpu_memory='max': expected 'all'.*'min_max'"),
        ({"auto_select_gpus": "yes"}, r"auto_select_gpus='yes': expected True or False"),
    ],
)
def test_bad_options_name_the_argument(gpus, kwargs, match):
    gpus(1)
    with pytest.raises(MisconfigurationError, match=match):
        torchplug.Trainer(accelerator="gpu", devices=1, **kwargs, **QUIET)


def test_options_are_refused_when_the_cpu_is_selected():
    with pytest.raises(MisconfigurationError, match="auto_select_gpus"):
        torchplug.Trainer(accelerator="cpu", auto_select_gpus=True, **QUIET)


def test_benchmark_sets_cudnn_autotuning(gpus):
    gpus(1)
    torch.backends.cudnn.benchmark = False
    torchplug.Trainer(accelerator="gpu", devices=1, benchmark=True, **QUIET)
    assert torch.backends.cudnn.benchmark is True
    torchplug.Trainer(accelerator="gpu", devices=1, benchmark=False, **QUIET)
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_sets_cublas_workspace_and_cudnn(gpus, monkeypatch):
    gpus(1)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    torchplug.Trainer(accelerator="gpu", devices=1, deterministic=True, **QUIET)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False  # autotuning would pick kernels per run


def test_deterministic_keeps_a_workspace_the_user_chose(gpus, monkeypatch):
    gpus(1)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    torchplug.Trainer(accelerator="gpu", devices=1, deterministic=True, **QUIET)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_with_benchmark_warns(gpus):
    gpus(1)
    with pytest.warns(UserWarning, match="deterministic=True with benchmark=True"):
        torchplug.Trainer(accelerator="gpu", devices=1, deterministic=True, benchmark=True, **QUIET)
    assert torch.backends.cudnn.benchmark is True


def test_nothing_is_set_when_neither_flag_is_given(gpus, monkeypatch):
    gpus(1)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torchplug.Trainer(accelerator="gpu", devices=1, **QUIET)
    assert torch.backends.cudnn.benchmark is True
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
