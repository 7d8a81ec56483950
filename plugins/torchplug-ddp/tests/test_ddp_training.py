"""ddp, ddp_cpu and ddp_spawn training for real: two processes (or a world of one), gloo, the Trainer, a tiny
regression.

Each run writes what every rank saw and ended with (see ``ddp_train_script.py``); the tests compare them."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from ddp_test_support import processes_mentioning, run

from torchplug import MisconfigurationError, Trainer, registry

SCRIPT = Path(__file__).with_name("ddp_train_script.py")
pytestmark = pytest.mark.timeout(180)


def train(tmp_path, python, **config):
    script = tmp_path / "train.py"
    shutil.copy(SCRIPT, script)
    ran = run([python, str(script), json.dumps(config), str(tmp_path)], tmp_path).check()
    assert processes_mentioning(str(tmp_path)) == []
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    return ran, reports


def single_device(tmp_path, **config):
    """The reference run, in this process: one device, the whole batch."""
    spec = importlib.util.spec_from_file_location("ddp_train_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "reference"
    out.mkdir()
    trainer, model = module.main({"strategy": "single_device", "accelerator": "cpu", "devices": 1, **config}, str(out))
    return module.weights(model)


def test_ddp_cpu_two_processes_sync_dist_and_the_sampler(tmp_path, python):
    _, reports = train(tmp_path, python, strategy="ddp_cpu", accelerator="cpu", devices=2, batch_size=4)
    assert sorted(reports) == ["rank0", "rank1"]
    r0, r1 = reports["rank0"], reports["rank1"]
    assert [(r["global_rank"], r["world_size"], r["environment"]) for r in (r0, r1)] == [(0, 2, "local"), (1, 2, "local")]
    assert r0["pid"] != r1["pid"]
    # sync_dist: every reduction, identical on both ranks; an unsynced value stays per rank
    for metrics in (r0["metrics"], r1["metrics"]):
        assert {k: metrics[k] for k in ("rank_mean", "rank_sum", "rank_max", "rank_min")} == {
            "rank_mean": 1.5, "rank_sum": 3.0, "rank_max": 2.0, "rank_min": 1.0,
        }  # fmt: skip
    assert r0["metrics"]["loss_synced"] == r1["metrics"]["loss_synced"]
    assert (r0["metrics"]["rank_unsynced"], r1["metrics"]["rank_unsynced"]) == (1.0, 2.0)
    # DistributedSampler without shuffle (the user did not shuffle): each rank its own interleaved half, in order
    for epoch in ("0", "1"):
        assert r0["seen"][epoch] == list(range(0, 64, 2)) and r1["seen"][epoch] == list(range(1, 64, 2))
    # DDP kept the replicas identical
    assert r0["weights"] == r1["weights"]


def test_ddp_with_the_cpu_accelerator_shuffles_when_the_user_did(tmp_path, python):
    _, reports = train(tmp_path, python, strategy="ddp", accelerator="cpu", devices=2, batch_size=4, shuffle=True)
    r0, r1 = reports["rank0"], reports["rank1"]
    for epoch in ("0", "1"):
        halves = r0["seen"][epoch], r1["seen"][epoch]
        assert sorted(halves[0] + halves[1]) == list(range(64))  # disjoint and complete
        assert halves[0] != list(range(0, 64, 2))  # shuffled
    assert r0["seen"]["0"] != r0["seen"]["1"]  # set_epoch: a new permutation each epoch
    assert r0["weights"] == r1["weights"]


def test_ddp_spawn_returns_the_trained_weights_and_metrics_to_the_caller(tmp_path, python):
    _, reports = train(tmp_path, python, strategy="ddp_spawn", devices=2, accelerator="cpu", batch_size=4)
    caller = reports["caller"]
    assert caller["metrics"]["rank_sum"] == 3.0 and caller["metrics"]["rank_unsynced"] == 1.0
    reference = single_device(tmp_path, batch_size=8)
    assert torch.allclose(torch.tensor(caller["weights"]), torch.tensor(reference), rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_a_world_of_one_is_a_process_group_of_one(tmp_path, python, strategy):
    """devices=1 trains like one process, and still through a process group (of one) and DistributedDataParallel."""
    _, reports = train(tmp_path, python, strategy=strategy, accelerator="cpu", devices=1, batch_size=8)
    spawned = strategy == "ddp_spawn"
    assert sorted(reports) == (["caller"] if spawned else ["rank0"])  # one process ran the stage
    report = reports["caller" if spawned else "rank0"]
    assert (report["global_rank"], report["world_size"], report["environment"]) == (0, 1, "local")
    metrics = report["metrics"]
    assert (metrics["process_group_size"], metrics["wrapped_in_ddp"]) == (1.0, 1.0)
    assert {k: metrics[k] for k in ("rank_mean", "rank_sum", "rank_max", "rank_min", "rank_unsynced")} == {
        "rank_mean": 1.0, "rank_sum": 1.0, "rank_max": 1.0, "rank_min": 1.0, "rank_unsynced": 1.0,
    }  # fmt: skip
    if not spawned:
        assert report["seen"]["0"] == report["seen"]["1"] == list(range(64))  # the sampler's one shard: everything
    reference = single_device(tmp_path, batch_size=8)
    assert torch.allclose(torch.tensor(report["weights"]), torch.tensor(reference), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("strategy", "devices"), [("ddp_cpu", 2), ("ddp", 1), ("ddp2", 1)])
def test_accumulation_skips_the_gradient_all_reduce_until_the_window_ends(tmp_path, python, strategy, devices):
    """``ops.no_sync`` is DDP's ``no_sync`` for every DDP strategy: micro-batches inside an accumulation window do
    not all-reduce, the one that ends it does; the result is one step on the whole window's batch."""
    batch = 8 // devices
    _, reports = train(tmp_path, python, strategy=strategy, accelerator="cpu", devices=devices, batch_size=batch,
                       accumulate_grad_batches=2)  # fmt: skip
    assert sorted(reports) == [f"rank{r}" for r in range(devices)]
    for report in reports.values():
        assert report["metrics"]["wrapped_in_ddp"] == 1.0
        assert report["grad_sync"] == [False, True] * 8  # 8 micro-batches per epoch, two epochs
    reference = single_device(tmp_path, batch_size=8, accumulate_grad_batches=2)
    assert torch.allclose(torch.tensor(reports["rank0"]["weights"]), torch.tensor(reference), rtol=0, atol=1e-6)


def test_ddp_spawn_refuses_an_unpicklable_model_and_says_why(tmp_path):
    from torchplug.testing import QUIET, BoringModel, regression_loader

    class Local(BoringModel):  # defined in a function: pickle cannot find it by name
        pass

    trainer = Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, **QUIET)
    with pytest.raises(MisconfigurationError, match="start_method='spawn'.*pickling failed: .*Local.*use strategy='ddp'"):
        trainer.fit(Local(), regression_loader())


def _precisions():
    """Every installed precision backend (aliases once), so amp's 16-mixed/bf16-mixed are covered when present."""
    return [backend.name for backend in registry.discover("precision")]


# How far apart the runs may end. They differ only in where rounding happens: the mean gradient of a batch of
# 8 on one device, versus the average of two batches of 4 from two processes. In 32/64-bit that is far below
# 1e-6. In a 16-bit format a gradient is rounded to its mantissa (11 bits for float16, 8 for bfloat16) before
# it is averaged, so after 16 SGD steps the weights may differ by a few units of that format's epsilon.
_EPSILON = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _tolerance(precision):
    if "bf16" in precision:
        return 8 * _EPSILON[torch.bfloat16]
    if precision.startswith("16") or precision in ("mixed", "apex"):
        return 8 * _EPSILON[torch.float16]
    return 1e-6


@pytest.mark.parametrize("precision", _precisions())
def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(tmp_path, python, precision):
    try:
        Trainer(strategy="ddp_cpu", accelerator="cpu", devices=2, precision=precision, logger=False)
    except MisconfigurationError as err:
        pytest.skip(f"precision {precision!r} cannot run on the CPU here: {err}")
    _, reports = train(tmp_path, python, strategy="ddp_cpu", accelerator="cpu", devices=2, batch_size=4, precision=precision)
    ddp = torch.tensor(reports["rank0"]["weights"])
    assert reports["rank1"]["weights"] == reports["rank0"]["weights"]
    same_data = torch.tensor(single_device(tmp_path, batch_size=8, precision=precision))
    tolerance = _tolerance(precision)
    assert torch.allclose(ddp, same_data, rtol=0, atol=tolerance), (ddp - same_data).abs().max()
    # the tolerance is tight enough to notice a mistake: half the batch per step is not the same training
    shutil.rmtree(tmp_path / "reference")
    half_batch = torch.tensor(single_device(tmp_path, batch_size=4, precision=precision))
    assert not torch.allclose(ddp, half_batch, rtol=0, atol=tolerance)
