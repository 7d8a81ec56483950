"""fsdp on CUDA with NCCL: one GPU in this process (a process group of one), two GPUs when present.

Skipped (with the reason) where CUDA is absent, and the two-GPU test where only one GPU is present. Run with
``python -m pytest -m gpu plugins/torchplug-fsdp/tests/test_fsdp_gpu.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fsdp_jobs import run_job
from fsdp_test_support import launch_jobs, one_process, processes_mentioning, reports

import torchplug
from torchplug_fsdp import consolidate_checkpoint

pytest.importorskip("torchplug_cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("fsdp"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

GPU = {"accelerator": "gpu", "strategy": "fsdp", "auto_wrap_policy": "Block"}


def weights(report):
    return torch.tensor(report["weights"], dtype=torch.float64)


def single_gpu(tmp_path, batch_size, **trainer):
    job = {"name": "single", "trainer": {"accelerator": "gpu", "strategy": "single_device", "devices": 1, **trainer},
           "data": {"batch_size": batch_size}}  # fmt: skip
    return run_job(job, str(tmp_path))


def test_one_gpu_trains_like_single_device_and_its_checkpoint_resumes_and_consolidates(tmp_path):
    job = {"name": "one", "trainer": {**GPU, "devices": 1}, "data": {"batch_size": 8},
           "checkpoints": [{"dirpath": "ckpt", "every_n_train_steps": 4, "save_top_k": -1}]}  # fmt: skip
    with one_process():
        import torch.distributed as dist

        fsdp = run_job(job, str(tmp_path))
        assert dist.get_backend() == "nccl"
    assert fsdp["param_type"] == "DTensor" and fsdp["global_step"] == 16
    reference = single_gpu(tmp_path, 8)
    assert float((weights(fsdp) - weights(reference)).abs().max()) <= 1e-5
    resume = copy.deepcopy(job)
    resume.update(name="resumed", checkpoints=[], ckpt_path="ckpt/epoch=0-step=4.ckpt")
    with one_process():
        resumed = run_job(resume, str(tmp_path))
    assert resumed["weights"] == fsdp["weights"]
    consolidated = consolidate_checkpoint(tmp_path / "ckpt" / "epoch=1-step=16.ckpt", tmp_path / "one.ckpt")
    loaded = torchplug.load_checkpoint(tmp_path / "one.ckpt")  # made on a GPU, loads on the host
    assert all(t.device.type == "cpu" for t in loaded["state_dict"].values())
    flat = torch.cat([consolidated["state_dict"][name].double().flatten() for name in fsdp["names"]])
    assert torch.equal(flat, weights(fsdp))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_one_gpu_precisions(tmp_path, precision):
    if "bf16" in precision and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    job = {"name": precision, "trainer": {**GPU, "devices": 1, "precision": precision}, "data": {"batch_size": 8},
           "model": {"optimizer": "sgd", "lr": 0.1}}  # fmt: skip
    with one_process():
        fsdp = run_job(job, str(tmp_path))
    reference = single_gpu(tmp_path, 8, precision=precision)
    tolerance = 8 * (2.0**-8 if "bf16" in precision else 2.0**-11)
    assert float((weights(fsdp) - weights(reference)).abs().max()) <= tolerance
    expected = "torch.bfloat16" if precision == "bf16-true" else "torch.float32"
    assert fsdp["param_dtype"] == expected and fsdp["grad_dtype"] == expected


def test_cpu_offload_keeps_the_shards_on_the_host(tmp_path):
    job = {"name": "offload", "trainer": {**GPU, "devices": 1, "cpu_offload": True}, "data": {"batch_size": 8}}
    with one_process():
        offloaded = run_job(job, str(tmp_path))
    reference = single_gpu(tmp_path, 8)
    assert float((weights(offloaded) - weights(reference)).abs().max()) <= 1e-5


@two_gpus
def test_two_gpus_train_as_one_with_the_whole_batch(tmp_path):
    out = tmp_path / "two"
    launch_jobs(out, [{"name": "two", "trainer": {**GPU, "devices": 2}, "data": {"batch_size": 4}}]).check()
    assert processes_mentioning(str(out)) == []
    rank0, rank1 = reports(out, "two")
    assert rank0["weights"] == rank1["weights"]
    reference = single_gpu(tmp_path, 8)
    assert float((weights(rank0) - weights(reference)).abs().max()) <= 1e-5
