"""fsdp training for real: two processes, gloo, the Trainer, a small residual network.

One launch runs every job below in the same two processes (the process group outlives each fit), and each job is
compared with the same training in one process (``single_device``, the whole batch) run here, in the test
process. All of it on the CPU, also on a machine with a GPU (``accelerator="cpu"`` throughout)."""

from __future__ import annotations

import copy

import pytest
import torch
from fsdp_jobs import run_job
from fsdp_test_support import built_once, launch_jobs, processes_mentioning, reports

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("fsdp")]

FSDP = {"accelerator": "cpu", "strategy": "fsdp", "devices": 2, "auto_wrap_policy": "Block"}
SGD = {"optimizer": "sgd", "lr": 0.1}
JOBS = [
    {"name": "fsdp", "trainer": FSDP},
    {"name": "ddp", "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2}},
    {"name": "accumulate", "trainer": {**FSDP, "accumulate_grad_batches": 2, "gradient_clip_val": 0.05,
                                       "reshard_between_micro_batches": False}},  # fmt: skip
    {"name": "manual", "trainer": FSDP, "model": {"manual": True}},
    {"name": "activation_checkpointing", "trainer": {**FSDP, "activation_checkpointing_policy": "Block"}},
    {"name": "hybrid", "trainer": {**FSDP, "sharding_strategy": "HYBRID_SHARD", "device_mesh": [2, 1]},
     "checkpoints": [{"dirpath": "hybrid", "every_n_train_steps": 16, "save_top_k": -1}]},
    {"name": "root_only", "trainer": {**FSDP, "auto_wrap_policy": None}},
    {"name": "bf16-mixed", "trainer": {**FSDP, "precision": "bf16-mixed"}, "model": SGD},
    {"name": "16-mixed", "trainer": {**FSDP, "precision": "16-mixed"}, "model": SGD, "inject_inf": {"rank": 1, "step": 6}},
    {"name": "bf16-true", "trainer": {**FSDP, "precision": "bf16-true"}, "model": SGD},
]
STEPS = 16  # 2 epochs of 64 samples, a global batch of 8
UNITS = 4  # three Blocks and the root


def _launch(out):
    launch_jobs(out, JOBS).check()
    assert processes_mentioning(str(out)) == []


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    return built_once(tmp_path_factory, "fsdp_training", _launch), None


def single_process(job: dict, tmp_path) -> dict:
    """The same training in this process, on one device, with the whole global batch per step."""
    reference = copy.deepcopy(job)
    kept = ("precision", "accumulate_grad_batches", "gradient_clip_val")
    reference["trainer"] = {k: v for k, v in job["trainer"].items() if k in kept}
    reference["trainer"].update(accelerator="cpu", strategy="single_device", devices=1)
    reference["data"] = {"batch_size": 8}
    if "inject_inf" in job:
        reference["inject_inf"] = {**job["inject_inf"], "rank": 0}
    return run_job(reference, str(tmp_path))


def weights(report: dict) -> torch.Tensor:
    return torch.tensor(report["weights"], dtype=torch.float64)


# A 16-bit format rounds each value to its mantissa (8 bits for bfloat16, 11 for float16). Sharded and unsharded
# runs round in different places (FSDP gathers parameters in 16 bits and casts a unit's inputs; autocast casts
# at each operation), so after 16 SGD steps the weights may differ by a few units of that format's epsilon.
TOLERANCE = {"bf16-mixed": 8 * 2.0**-8, "bf16-true": 8 * 2.0**-8, "16-mixed": 8 * 2.0**-11}


@pytest.mark.parametrize("job", JOBS, ids=[job["name"] for job in JOBS])
def test_two_ranks_train_as_one_process_with_the_whole_batch(launched, job, tmp_path):
    out, _ = launched
    rank0, rank1 = reports(out, job["name"])
    assert rank0["weights"] == rank1["weights"]  # the gathered parameters agree on every rank
    assert rank0["global_step"] == STEPS // job["trainer"].get("accumulate_grad_batches", 1)
    reference = single_process(job, tmp_path)
    difference = float((weights(rank0) - weights(reference)).abs().max())
    assert difference <= TOLERANCE.get(job["trainer"].get("precision"), 1e-6), difference


def test_fsdp_equals_ddp(launched):
    out, _ = launched
    (fsdp, _), (ddp, _) = reports(out, "fsdp"), reports(out, "ddp")
    assert float((weights(fsdp) - weights(ddp)).abs().max()) <= 1e-6


def test_each_rank_holds_half_of_parameters_gradients_and_optimizer_state(launched):
    out, _ = launched
    ranks = reports(out, "fsdp")
    assert [r["param_type"] for r in ranks] == ["DTensor", "DTensor"]
    for kind in ("params", "grads", "state"):
        total = ranks[0]["bytes"][f"{kind}_total"]
        held = [r["bytes"][kind] for r in ranks]
        assert sum(held) == total  # nothing held twice
        for share in held:
            assert 0.45 <= share / total <= 0.55, (kind, held, total)  # ~1/N; a 1-row head cannot split evenly
    (ddp, _) = reports(out, "ddp")
    assert ddp["bytes"]["params"] == ddp["bytes"]["params_total"]  # ddp: a whole replica per rank


def test_sync_dist_reduces_across_ranks(launched):
    out, _ = launched
    rank0, rank1 = reports(out, "fsdp")
    for report in (rank0, rank1):
        assert report["metrics"]["rank_sum"] == 3.0 and report["metrics"]["rank_max"] == 2.0
    assert rank0["metrics"]["loss"] == rank1["metrics"]["loss"]
    assert (rank0["metrics"]["rank_unsynced"], rank1["metrics"]["rank_unsynced"]) == (1.0, 2.0)


def test_gradients_are_reduced_once_per_optimizer_step_when_accumulating(launched):
    out, _ = launched
    plain, accumulating = reports(out, "fsdp")[0], reports(out, "accumulate")[0]
    assert plain["collectives"]["reduce_scatter_single"] == STEPS * UNITS
    # 16 micro-batches in 8 windows of 2: one reduce-scatter per unit per window, none between micro-batches
    assert accumulating["collectives"]["reduce_scatter_single"] == (STEPS // 2) * UNITS
    # reshard_between_micro_batches=False: the first micro-batch's parameters stay gathered for the second
    assert accumulating["collectives"]["all_gather_single"] < plain["collectives"]["all_gather_single"]


def test_mixed_precision_keeps_float32_master_weights_and_gradients(launched):
    out, _ = launched
    for name in ("bf16-mixed", "16-mixed"):
        report = reports(out, name)[0]
        assert (report["param_dtype"], report["grad_dtype"]) == ("torch.float32", "torch.float32"), name
    assert reports(out, "bf16-true")[0]["param_dtype"] == "torch.bfloat16"
    assert reports(out, "fsdp")[0]["state_dtypes"] == ["torch.float32"]


def test_16_mixed_skips_a_step_on_every_rank_when_one_rank_overflows(launched):
    out, _ = launched
    rank0, rank1 = reports(out, "16-mixed")
    step = 6  # an inf was written into rank 1's gradient shard only
    assert rank0["scales"] == rank1["scales"] and rank0["moved"] == rank1["moved"]
    assert rank0["moved"][step] is False and rank0["moved"][step + 1] is True
    assert rank0["scales"][step] == rank0["scales"][step - 1] / 2


def test_a_hybrid_sharded_checkpoint_holds_the_trained_weights(launched, tmp_path):
    """A 2-D mesh (replicas x shards): DCP writes each replicated shard once; the consolidated file is the model."""
    from torchplug_fsdp import consolidate_checkpoint

    out, _ = launched
    (report, _) = reports(out, "hybrid")
    checkpoint = consolidate_checkpoint(out / "hybrid" / "epoch=1-step=16.ckpt", tmp_path / "hybrid.ckpt")
    flat = [v for name in report["names"] for v in checkpoint["state_dict"][name].double().flatten().tolist()]
    assert flat == report["weights"]
