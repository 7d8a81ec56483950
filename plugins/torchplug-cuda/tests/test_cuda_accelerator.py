"""The cuda accelerator on a machine without a GPU: selection, device parsing, errors, flags and batch copies.

Where a test needs GPUs to exist, it plays a machine with N of them through the plugin's seam
(``gpus(n)`` replaces ``torchplug_cuda.accelerator._cuda_device_count``, see conftest.py); nothing in these tests
touches CUDA itself. Hooks that a run calls at setup (``torchplug_setup_environment``, ``torchplug_step_ops``) are
called here through the trainer's hook relay, with ``trainer.world``/``trainer.root_device`` set as setup would set
them, since the real setup would make a GPU current.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

import torchplug
from torchplug import MisconfigurationError, World, registry
from torchplug._step import clip_gradients, optimizer_step
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
    assert trainer.run.device_type == "cuda" and CUDAAccelerator.device_type == "cuda"
    assert trainer.accelerator.device_count() == 2  # the one device-count API


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
    trainer.world = World(global_rank=1, local_rank=1, world_size=2)  # what torchplug_world answers first in setup
    with pytest.raises(MisconfigurationError, match=r"devices=\[1\] gives 1 GPU\(s\) per node.*local rank 1"):
        trainer.accelerator.torchplug_root_device(trainer=trainer)


@dataclass
class Pair:
    features: torch.Tensor
    note: str = "kept"


def test_batches_are_copied_to_the_root_gpu_without_blocking(gpus, monkeypatch):
    """The accelerator's ``to_device`` copies every tensor of a nested batch to the root device with
    ``non_blocking=True``, pinned or not (a blocking copy from pageable memory synchronises the stream); the other
    step operations are the core's. ``Tensor.to`` is replaced by a recorder: there is no GPU to copy to."""
    gpus(2)
    trainer = torchplug.Trainer(accelerator="gpu", devices=[1], **QUIET)
    trainer.root_device = torch.device("cuda", 1)  # what torchplug_root_device answers in setup
    ops = trainer.hook.torchplug_step_ops(trainer=trainer)
    copies = []

    def record(tensor, device, non_blocking=False):
        copies.append((tuple(tensor.shape), device, non_blocking))
        return tensor

    monkeypatch.setattr(torch.Tensor, "to", record)
    batch = (torch.ones(2, 3), {"y": [torch.zeros(2)], "pair": Pair(torch.ones(4))}, "id")
    moved = ops.to_device(batch)
    assert moved[2] == "id" and moved[1]["pair"].note == "kept"
    assert sorted(copies) == sorted([((2, 3), torch.device("cuda", 1), True), ((2,), torch.device("cuda", 1), True),
                                     ((4,), torch.device("cuda", 1), True)])  # fmt: skip
    copies.clear()
    assert ops.to_device(torch.ones(5)).shape == (5,) and copies == [((5,), torch.device("cuda", 1), True)]
    assert ops.optimizer_step is optimizer_step and ops.clip_gradients is clip_gradients


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


def setup_environment(**kwargs):
    """A Trainer on one played GPU, and its run's setup_environment (where the accelerator applies the flags)."""
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, **kwargs, **QUIET)
    trainer.hook.torchplug_setup_environment(trainer=trainer)
    return trainer


def test_benchmark_sets_cudnn_autotuning(gpus):
    gpus(1)
    torch.backends.cudnn.benchmark = False
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, benchmark=True, **QUIET)
    assert torch.backends.cudnn.benchmark is False  # configure only checks: set when a run sets up
    trainer.hook.torchplug_setup_environment(trainer=trainer)
    assert torch.backends.cudnn.benchmark is True
    setup_environment(benchmark=False)
    assert torch.backends.cudnn.benchmark is False


def test_deterministic_sets_cublas_workspace_and_cudnn(gpus, monkeypatch):
    gpus(1)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, deterministic=True, **QUIET)
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.backends.cudnn.deterministic is False
    trainer.hook.torchplug_setup_environment(trainer=trainer)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.deterministic is True
    assert torch.backends.cudnn.benchmark is False  # autotuning would pick kernels per run


def test_deterministic_keeps_a_workspace_the_user_chose(gpus, monkeypatch):
    gpus(1)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    setup_environment(deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert torch.backends.cudnn.deterministic is True


def test_deterministic_with_benchmark_warns(gpus):
    gpus(1)
    torch.backends.cudnn.benchmark = False
    with pytest.warns(UserWarning, match="deterministic=True with benchmark=True"):  # at construction
        trainer = torchplug.Trainer(accelerator="gpu", devices=1, deterministic=True, benchmark=True, **QUIET)
    trainer.hook.torchplug_setup_environment(trainer=trainer)
    assert torch.backends.cudnn.benchmark is True  # the user's explicit choice is kept


def test_nothing_is_set_when_neither_flag_is_given(gpus, monkeypatch):
    gpus(1)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    setup_environment()
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_the_cuda_rng_is_captured_and_set_with_the_host_generators(gpus, monkeypatch):
    """The root device's CUDA generator joins the host's in the core's RNG states ("torch.cuda"), per rank, and is
    set back where they are (``torch.cuda``'s generator functions are replaced by recorders: there is no GPU)."""
    gpus(2)
    trainer = torchplug.Trainer(accelerator="gpu", devices=[1], **QUIET)
    trainer.root_device = torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert not any(trainer.hook.torchplug_get_rng_states(trainer=trainer))  # nothing drawn on a GPU: nothing to save

    state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": state if device == trainer.root_device else None)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new, device="cuda": restored.append((new, device)))
    answers = [a for a in trainer.hook.torchplug_get_rng_states(trainer=trainer) if a]
    assert answers == [{"torch.cuda": state}]
    from torchplug._state import get_rng_states

    assert get_rng_states(trainer)["torch.cuda"] is state  # merged with the host's generators
    trainer.root_device = None  # a process that did not set up the run (the caller of a spawned one)
    assert not any(trainer.hook.torchplug_get_rng_states(trainer=trainer))
    trainer.root_device = torch.device("cuda", 1)
    trainer.hook.torchplug_set_rng_states(trainer=trainer, states=answers[0])
    assert len(restored) == 1 and restored[0][0] is state and restored[0][1] == torch.device("cuda", 1)
    trainer.hook.torchplug_set_rng_states(trainer=trainer, states={"torch": torch.get_rng_state()})  # a CPU run's
    assert len(restored) == 1
