"""``auto_select_gpus``: which GPUs are free, in CUDA's numbering, and clear failures when too few are.

The machine is played through the plugin's seams (see conftest.py): ``gpus(n)`` for torch's GPU count and
``driver([...])`` for what NVML/nvidia-smi report per GPU (compute mode and the processes on it).
"""

from __future__ import annotations

import os

import pytest

import torchplug
from torchplug import MisconfigurationError
from torchplug.testing import QUIET
from torchplug_cuda import _gpus
from torchplug_cuda._select import busy_reason, pick_free_gpus
from torchplug_cuda.accelerator import AUTO_SELECTED_ENV

pytestmark = pytest.mark.filterwarnings("ignore:strategy='dp'")
OTHER = 4_000_000  # a pid that is not ours


def make_trainer(devices, **kwargs):
    strategy = "dp" if devices not in (1, "1") else "auto"
    return torchplug.Trainer(accelerator="gpu", devices=devices, strategy=strategy, auto_select_gpus=True, **kwargs, **QUIET)


def test_busy_gpus_are_skipped(gpus, driver, gpu_state):
    gpus(4)
    driver([
        gpu_state(0, pids=(OTHER,)),                              # another job shares it
        gpu_state(1, pids=(OTHER + 1,), mode="Exclusive_Process"),  # another job owns it
        gpu_state(2),
        gpu_state(3),
    ])  # fmt: skip
    trainer = make_trainer(2)
    assert trainer.device_ids == [2, 3]
    assert os.environ[AUTO_SELECTED_ENV] == f"{os.getpid()}|2|2,3"


def test_a_count_picks_the_first_free_ones_not_the_first_ones(gpus, driver, gpu_state):
    gpus(3)
    driver([gpu_state(0, pids=(OTHER,)), gpu_state(1), gpu_state(2)])
    assert make_trainer(1).device_ids == [1]
    assert make_trainer("1").device_ids == [1]


def test_our_own_process_does_not_make_a_gpu_busy(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0, pids=(os.getpid(),)), gpu_state(1)])
    assert make_trainer(2).device_ids == [0, 1]


def test_prohibited_gpus_are_skipped(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0, mode="Prohibited"), gpu_state(1)])
    assert make_trainer(1).device_ids == [1]


def test_too_few_free_gpus_fail_naming_the_busy_ones(gpus, driver, gpu_state):
    gpus(4)
    driver([
        gpu_state(0, pids=(OTHER, OTHER + 7)),
        gpu_state(1, pids=(OTHER + 1,), mode="Exclusive_Process"),
        gpu_state(2),
        gpu_state(3),
    ])  # fmt: skip
    with pytest.raises(MisconfigurationError) as info:
        make_trainer(3)
    message = str(info.value)
    assert "auto_select_gpus=True with devices=3 asked for 3 free GPUs" in message
    assert "only 2 of the 4 visible GPUs are free ([2, 3])" in message
    assert f"GPU 0 (Test GPU 80GB, nvidia-smi index 0) is used by process {OTHER}, {OTHER + 7}" in message
    assert f"GPU 1 (Test GPU 80GB, nvidia-smi index 1) is used by process {OTHER + 1} (exclusive-process mode)" in message
    assert "devices=2" in message


def test_no_free_gpu_at_all(gpus, driver, gpu_state):
    gpus(1)
    driver([gpu_state(0, pids=(OTHER,))])
    with pytest.raises(MisconfigurationError, match=r"only 0 of the 1 visible GPUs are free\. GPU 0 .* Wait for"):
        make_trainer(1)


def test_all_gpus_with_minus_one_must_all_be_free(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0), gpu_state(1)])
    assert make_trainer(-1).device_ids == [0, 1]
    driver([gpu_state(0), gpu_state(1, pids=(OTHER,))])
    with pytest.raises(MisconfigurationError, match=r"devices=-1 asked for 2 free GPUs"):
        make_trainer(-1)


@pytest.mark.parametrize("devices", [[0, 1], "0, 1"])
def test_named_gpus_and_auto_selection_conflict(gpus, driver, gpu_state, devices):
    gpus(2)
    driver([gpu_state(0), gpu_state(1)])
    with pytest.raises(MisconfigurationError, match=r"auto_select_gpus=True chooses which GPUs.*already names them"):
        make_trainer(devices)


def test_cuda_visible_devices_maps_driver_gpus_to_cuda_indices(gpus, driver, gpu_state, monkeypatch):
    """With CUDA_VISIBLE_DEVICES=3,1 the process sees the driver's GPU 3 as cuda:0 and GPU 1 as cuda:1."""
    gpus(2)
    driver([gpu_state(0), gpu_state(1), gpu_state(2), gpu_state(3, pids=(OTHER,))])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert make_trainer(1).device_ids == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-333,GPU-111")  # UUID prefixes, as CUDA accepts them
    assert make_trainer(1).device_ids == [1]


def test_a_count_mismatch_between_driver_and_torch_is_refused(gpus, driver, gpu_state):
    gpus(2)
    driver([gpu_state(0)])
    with pytest.raises(MisconfigurationError, match="driver lists 1 visible GPUs .* torch sees 2"):
        make_trainer(1)


def test_launched_processes_reuse_the_parents_choice(gpus, driver, gpu_state, monkeypatch):
    """A process started by the launcher finds the choice in its environment and does not choose again (by then
    its siblings may be using the chosen GPUs)."""
    gpus(4)
    calls = driver([gpu_state(i, pids=(OTHER,)) for i in range(4)])  # every GPU looks busy now
    monkeypatch.setenv(AUTO_SELECTED_ENV, f"{os.getpid() + 1}|2|2,3")
    assert make_trainer(2).device_ids == [2, 3]
    assert calls == []
    # the choosing process itself, or a different request, chooses afresh
    monkeypatch.setenv(AUTO_SELECTED_ENV, f"{os.getpid()}|2|2,3")
    with pytest.raises(MisconfigurationError, match="only 0 of the 4"):
        make_trainer(2)
    monkeypatch.setenv(AUTO_SELECTED_ENV, f"{os.getpid() + 1}|3|0,1,2")
    with pytest.raises(MisconfigurationError, match="only 0 of the 4"):
        make_trainer(2)


def test_without_auto_select_the_driver_is_not_asked(gpus, driver, gpu_state):
    gpus(2)
    calls = driver([gpu_state(0, pids=(OTHER,)), gpu_state(1)])
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, **QUIET)
    assert trainer.device_ids == [0] and calls == []


def test_driver_errors_surface_with_both_causes(gpus, monkeypatch):
    gpus(1)

    def nvml(processes):
        raise ImportError("no NVML here")

    def smi(processes):
        raise FileNotFoundError("nvidia-smi is not on PATH")

    monkeypatch.setattr(_gpus, "_query_nvml", nvml)
    monkeypatch.setattr(_gpus, "_query_nvidia_smi", smi)
    with pytest.raises(MisconfigurationError, match=r"auto_select_gpus=True needs .* NVML failed \(ImportError: no NVML here\).*nvidia-smi failed"):
        make_trainer(1)


def test_busy_reason_and_pick_directly(gpu_state):
    assert busy_reason(gpu_state(0), own_pids={1}) is None
    assert busy_reason(gpu_state(0, pids=(1,)), own_pids={1}) is None
    many = tuple(range(100, 108))
    assert busy_reason(gpu_state(0, pids=many), own_pids=set()) == (
        "is used by process 100, 101, 102, 103, 104 and 3 more"
    )
    states = [gpu_state(0, pids=(9,)), gpu_state(1), gpu_state(2)]
    assert pick_free_gpus(2, states, own_pids=set(), requested=2) == [1, 2]


def test_the_choice_is_made_before_other_plugins_check_the_devices(gpus, driver, gpu_state):
    """The accelerator chooses in torchplug_select_devices, during selection, so the chosen GPUs are in
    ``trainer.run`` before any plugin's configure checks them."""
    gpus(3)
    driver([gpu_state(0, pids=(OTHER,)), gpu_state(1), gpu_state(2)])
    seen = []

    class Watcher:
        @torchplug.hookimpl
        def torchplug_configure(self, trainer):
            seen.append(list(trainer.device_ids))

    trainer = make_trainer(2, plugins=[Watcher()])
    assert seen == [[1, 2]] and trainer.run.device_ids == (1, 2)
