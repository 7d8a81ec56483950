"""Sharded checkpoints, for real: a 2-rank job is SIGKILLed in the middle of a step, resumed from its last
(mid-epoch) checkpoint, and must end bitwise where an uninterrupted run ends; checkpoints move between 2 ranks
and 1 (DCP reshards); top-k deletes directories; "best"/"last" find directories; a sharded checkpoint
consolidates into one file that loads into a plain module; a planted pickle runs nothing.

The scenario runs once per module (a job started by the Trainer's launcher and killed, a job started by torchrun,
and a few one-process runs in this process); the tests read what they left.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from fsdp_jobs import Block, Net, full, run_job
from fsdp_test_support import (
    PYTHON,
    built_once,
    clean_environment,
    launch_jobs,
    one_process,
    processes_mentioning,
    reports,
)

import torchplug
from torchplug import MisconfigurationError
from torchplug.testing import QUIET, regression_loader
from torchplug_fsdp import consolidate_checkpoint

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("fsdp")]

TWO = {"accelerator": "cpu", "strategy": "fsdp", "devices": 2, "auto_wrap_policy": "Block"}
ONE = {**TWO, "devices": 1}
SHUFFLED = {"shuffle": True, "batch_size": 4}
WHOLE_BATCH = {"shuffle": True, "batch_size": 8}  # one process, the global batch of two ranks of 4
EVERY_3 = {"every_n_train_steps": 3, "save_top_k": -1}
DROPOUT = {"dropout": 0.1}  # random per step: resuming must restore every rank's generator

KILLED = {"name": "killed", "trainer": TWO, "data": SHUFFLED, "model": DROPOUT, "kill": {"rank": 1, "step": 7},
          "checkpoints": [{"dirpath": "killed", **EVERY_3, "save_last": True}]}  # fmt: skip
LAUNCH = [
    {"name": "uninterrupted", "trainer": TWO, "data": SHUFFLED, "model": DROPOUT},
    {"name": "resumed", "trainer": TWO, "data": SHUFFLED, "model": DROPOUT, "ckpt_path": "killed/last.ckpt"},
    {"name": "two_ranks", "trainer": TWO, "data": SHUFFLED, "checkpoints": [{"dirpath": "two", **EVERY_3}],
     "full_save_at": {"step": 3, "path": "full_step3.ckpt"}},
    {"name": "full_to_two", "trainer": TWO, "data": SHUFFLED, "ckpt_path": "full_step3.ckpt"},
    {"name": "one_to_two", "trainer": TWO, "data": SHUFFLED, "ckpt_path": "one/epoch=0-step=3.ckpt"},
    {"name": "top_k", "trainer": {**TWO, "max_steps": 10}, "data": SHUFFLED,
     "checkpoints": [{"dirpath": "top", "monitor": "loss", "save_top_k": 2, "every_n_train_steps": 2, "save_last": True}]},
]  # fmt: skip
SAVED_STEP3 = "two/epoch=0-step=3.ckpt"


def _play(out):
    """Everything the tests read, in order; what ran in this process is written as JSON next to the reports."""
    found = {}
    with one_process():  # the 1 -> 2 checkpoint
        found["one"] = run_job({"name": "one", "trainer": ONE, "data": WHOLE_BATCH,
                                "checkpoints": [{"dirpath": "one", **EVERY_3}]}, str(out))  # fmt: skip
    killed = launch_jobs(out, [KILLED], timeout=300)
    ended = time.time()
    assert processes_mentioning(str(out)) == [], "the killed job left processes behind"
    found["killed"] = {"returncode": killed.returncode, "output": killed.output, "ended": ended}
    launch_jobs(out, LAUNCH, torchrun=2).check()  # started by torchrun: the torchelastic environment
    assert processes_mentioning(str(out)) == []
    with one_process():  # 2 -> 1, from the sharded directory and from the one-file checkpoint of the same step
        found["two_to_one"] = run_job({"name": "two_to_one", "trainer": ONE, "data": WHOLE_BATCH,
                                       "ckpt_path": SAVED_STEP3}, str(out))  # fmt: skip
        found["full_to_one"] = run_job({"name": "full_to_one", "trainer": ONE, "data": WHOLE_BATCH,
                                        "ckpt_path": "full_step3.ckpt"}, str(out))  # fmt: skip
    (out / "in_this_process.json").write_text(json.dumps(found))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    out = built_once(tmp_path_factory, "fsdp_checkpoints", _play)
    return out, json.loads((out / "in_this_process.json").read_text())


def weights(report):
    return torch.tensor(report["weights"], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ kill and resume
def test_a_rank_killed_mid_step_ends_the_job_within_60_s_and_leaves_no_process(scenario):
    out, found = scenario
    killed = found["killed"]
    assert killed["returncode"] != 0, killed["output"]
    victim = int((out / "killed.rank1.pid").read_text())
    assert len(re.findall(rf"rank 1 \(pid {victim}\) was killed by SIGKILL", killed["output"])) == 1, killed["output"]
    assert killed["ended"] - (out / "killed.rank1.pid").stat().st_mtime < 60


def test_the_last_checkpoint_before_the_kill_is_complete_and_mid_epoch(scenario):
    out, _ = scenario
    last = out / "killed" / "last.ckpt"
    assert sorted(os.listdir(last)) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.ckpt"]
    meta = torchplug.load_checkpoint(last / "meta.ckpt")
    assert (meta["global_step"], meta["epoch"], meta["loops"]["phase"], meta["loops"]["batches_done"]) == (6, 0, "train", 6)
    assert len(meta["ranks"]) == 2  # every rank's generators and plugin state
    assert [p.name for p in (out / "killed").iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_resuming_the_killed_job_ends_bitwise_where_the_uninterrupted_run_ends(scenario):
    out, _ = scenario
    resumed, uninterrupted = reports(out, "resumed"), reports(out, "uninterrupted")
    assert [r["global_step"] for r in resumed] == [16, 16]
    assert [r["environment"] for r in resumed] == ["torchelastic", "torchelastic"]
    for rank in (0, 1):
        assert resumed[rank]["weights"] == uninterrupted[rank]["weights"]
        assert resumed[rank]["metrics"] == uninterrupted[rank]["metrics"]


def test_resuming_from_the_one_file_checkpoint_ends_bitwise_where_the_run_that_wrote_it_ends(scenario):
    out, _ = scenario
    resumed, uninterrupted = reports(out, "full_to_two"), reports(out, "two_ranks")
    assert [r["weights"] for r in resumed] == [r["weights"] for r in uninterrupted]


# ------------------------------------------------------------------------------------------------ other world sizes
def test_two_ranks_resume_what_one_process_saved(scenario):
    out, found = scenario
    reference = weights(reports(out, "two_ranks")[0])  # the same data and steps, uninterrupted, on two ranks
    one_to_two = reports(out, "one_to_two")
    assert one_to_two[0]["weights"] == one_to_two[1]["weights"] and one_to_two[0]["global_step"] == 16
    assert float((weights(one_to_two[0]) - reference).abs().max()) <= 1e-6
    assert float((weights(found["one"]) - reference).abs().max()) <= 1e-6  # and one process never interrupted


def test_one_process_resumes_what_two_ranks_saved_from_either_kind_of_checkpoint(scenario):
    out, found = scenario
    reference = weights(reports(out, "two_ranks")[0])
    two_to_one, full_to_one = found["two_to_one"], found["full_to_one"]
    assert two_to_one["global_step"] == full_to_one["global_step"] == 16
    assert float((weights(two_to_one) - reference).abs().max()) <= 1e-6
    assert two_to_one["weights"] == full_to_one["weights"]  # both restore exactly the same state


# ------------------------------------------------------------------------------------------------ ModelCheckpoint
def test_top_k_keeps_two_directories_and_last(scenario):
    out, _ = scenario
    (report, _) = reports(out, "top_k")
    kept = report["checkpoints"][0]
    assert len(kept["top"]) == 2 and kept["best"] in kept["top"]
    assert sorted(kept["files"]) == sorted([os.path.basename(p) for p in kept["top"]] + ["last.ckpt"])
    assert all((out / "top" / name).is_dir() for name in kept["files"])
    assert kept["last"] == str(out / "top" / "last.ckpt")


@pytest.mark.parametrize("which", ["best", "last"])
def test_ckpt_path_best_and_last_find_directories(scenario, which):
    out, _ = scenario
    (report, _) = reports(out, "top_k")
    expected = report["checkpoints"][0][which]
    job = {"name": which, "trainer": {**ONE, "max_steps": 1, "default_root_dir": str(out / "top")},
           "data": WHOLE_BATCH, "ckpt_path": which}  # fmt: skip
    if which == "best":  # 'best' needs the run's ModelCheckpoint (the top-k job's, without save_last: it writes nothing)
        job["checkpoints"] = [{"dirpath": "top", "monitor": "loss", "save_top_k": 2, "every_n_train_steps": 2}]
    with one_process():  # a fresh run: found on disk (the callback state inside each directory's meta.ckpt)
        resumed = run_job(job, str(out))
    assert resumed["ckpt_path"] == expected


def test_validate_loads_a_sharded_checkpoint_without_optimizers(scenario, tmp_path):
    out, _ = scenario
    expected = consolidate_checkpoint(out / SAVED_STEP3, tmp_path / "step3.ckpt")["state_dict"]
    model = Net()
    with one_process():
        trainer = torchplug.Trainer(**{**ONE, "auto_wrap_policy": {Block}, **QUIET})
        trainer.validate(model, regression_loader(16), ckpt_path=str(out / SAVED_STEP3))
        loaded = {name: full(p.detach()) for name, p in model.named_parameters()}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_the_meta_file_alone_is_refused_with_the_fix(scenario):
    out, _ = scenario
    with one_process(), pytest.raises(MisconfigurationError, match=r"is the meta.ckpt of a sharded checkpoint.*pass "
                                                                   r"the checkpoint directory"):  # fmt: skip
        run_job({"name": "meta", "trainer": ONE, "data": WHOLE_BATCH, "ckpt_path": f"{SAVED_STEP3}/meta.ckpt"},
                str(out))  # fmt: skip


# ------------------------------------------------------------------------------------------------ one file
def test_a_sharded_checkpoint_consolidates_into_the_one_file_checkpoint_of_the_same_step(scenario, tmp_path):
    out, _ = scenario
    consolidated = consolidate_checkpoint(out / SAVED_STEP3, tmp_path / "consolidated.ckpt")
    full = torchplug.load_checkpoint(out / "full_step3.ckpt")
    written = torchplug.load_checkpoint(tmp_path / "consolidated.ckpt")  # weights_only: plain data
    for checkpoint in (consolidated, written):
        assert checkpoint["state_dict"].keys() == full["state_dict"].keys()
        assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in full["state_dict"].items())
        assert _same(checkpoint["optimizer_states"], full["optimizer_states"])
        assert checkpoint["global_step"] == 3 and len(checkpoint["ranks"]) == 2
    plain = Net()  # an ordinary module, never sharded
    plain.load_state_dict(written["state_dict"], strict=True)
    optimizer = plain.configure_optimizers()
    optimizer.load_state_dict(written["optimizer_states"][0])  # torch's own format: by parameter index
    assert optimizer.state[plain.inp.weight]["exp_avg"].shape == plain.inp.weight.shape


def test_the_consolidate_command(scenario, tmp_path):
    out, _ = scenario
    target = tmp_path / "cli.ckpt"
    ran = subprocess.run([PYTHON, "-m", "torchplug_fsdp", "consolidate", str(out / SAVED_STEP3), str(target)],
                         capture_output=True, text=True, env=clean_environment(), timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert f"wrote {target}:" in ran.stdout
    assert torchplug.load_checkpoint(target)["global_step"] == 3
    missing = subprocess.run([PYTHON, "-m", "torchplug_fsdp", "consolidate", str(tmp_path / "nothing"), str(target)],
                             capture_output=True, text=True, env=clean_environment(), timeout=120)  # fmt: skip
    assert missing.returncode == 1 and "is not a sharded checkpoint directory" in missing.stderr


def test_one_process_of_another_strategy_resumes_a_consolidated_checkpoint(scenario, tmp_path):
    out, _ = scenario
    consolidate_checkpoint(out / SAVED_STEP3, tmp_path / "consolidated.ckpt")
    single = {"accelerator": "cpu", "strategy": "single_device", "devices": 1}
    from_consolidated = run_job({"name": "s1", "trainer": single, "data": WHOLE_BATCH,
                                 "ckpt_path": str(tmp_path / "consolidated.ckpt")}, str(out))  # fmt: skip
    from_full = run_job({"name": "s2", "trainer": single, "data": WHOLE_BATCH, "ckpt_path": "full_step3.ckpt"},
                        str(out))  # fmt: skip
    # (single_device keeps the loader's own shuffling, so this run's data order is not the sharded runs')
    assert from_consolidated["global_step"] == 16 and from_consolidated["weights"] == from_full["weights"]


# ------------------------------------------------------------------------------------------------ safety
class Planted:
    """Unpickling this runs ``os.system("touch <path>")``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _copy_checkpoint(out, tmp_path):
    copy = tmp_path / "planted.ckpt"
    shutil.copytree(out / SAVED_STEP3, copy)
    return copy


def _loaders_refuse(copy, message):
    """Resuming from it and consolidating it: both refuse with ``message``."""
    with one_process(), pytest.raises(MisconfigurationError, match=message):
        run_job({"name": "planted", "trainer": ONE, "data": WHOLE_BATCH, "ckpt_path": str(copy)}, str(copy.parent))
    with pytest.raises(MisconfigurationError, match=message):
        consolidate_checkpoint(copy, copy.parent / "consolidated.ckpt")


def test_a_pickle_planted_in_the_tensor_index_runs_nothing(scenario, tmp_path):
    out, _ = scenario
    copy, ran = _copy_checkpoint(out, tmp_path), tmp_path / "ran"
    payload = pickle.dumps(Planted(ran))
    pickle.loads(payload)  # the payload works: plain unpickling (what DCP does) runs it
    assert ran.exists()
    ran.unlink()
    (copy / ".metadata").write_bytes(payload)
    _loaders_refuse(copy, r"\.metadata' was refused: .*posix.system is not part of a checkpoint's tensor index")
    assert not ran.exists()


def test_a_pickled_entry_added_to_the_tensor_index_is_refused(scenario, tmp_path):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    out, _ = scenario
    copy = _copy_checkpoint(out, tmp_path)
    metadata = pickle.loads((copy / ".metadata").read_bytes())  # our own file: trusted here
    metadata.state_dict_metadata["state_dict/inp.weight"] = BytesStorageMetadata()
    (copy / ".metadata").write_bytes(pickle.dumps(metadata))
    _loaders_refuse(copy, r"BytesStorageMetadata is not part of a checkpoint's tensor index")


def test_a_tensor_index_pointing_outside_its_directory_is_refused(scenario, tmp_path):
    out, _ = scenario
    copy = _copy_checkpoint(out, tmp_path)
    metadata = pickle.loads((copy / ".metadata").read_bytes())
    first = next(iter(metadata.storage_data))
    metadata.storage_data[first].relative_path = "../../etc/passwd"
    (copy / ".metadata").write_bytes(pickle.dumps(metadata))
    _loaders_refuse(copy, r"points outside its checkpoint directory \('../../etc/passwd'\)")


def test_a_pickle_planted_in_meta_ckpt_runs_nothing(scenario, tmp_path):
    out, _ = scenario
    copy, ran = _copy_checkpoint(out, tmp_path), tmp_path / "ran"
    meta = torchplug.load_checkpoint(copy / "meta.ckpt")
    meta["hyper_parameters"]["planted"] = Planted(ran)
    torch.save(meta, copy / "meta.ckpt")
    _loaders_refuse(copy, r"weights_only=True because a checkpoint is data, not code")
    assert not ran.exists()


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_paths_are_atomic_directories(tmp_path):
    """The swap keeps the destination whole: the new directory replaces the old in one rename."""
    from torchplug import temporary_path
    from torchplug_fsdp._checkpoint import publish

    destination = tmp_path / "last.ckpt"
    for generation in ("old", "new"):
        staged = temporary_path(destination)
        staged.mkdir()
        (staged / "meta.ckpt").write_text(generation)
        publish(staged, destination)
        assert (destination / "meta.ckpt").read_text() == generation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    # a directory left by a process that was killed while saving is removed by the next save to that path
    dead = subprocess.Popen(["true"])
    dead.wait()
    prefix = temporary_path(destination).name.rsplit(".", 2)[0]
    leftover = tmp_path / f"{prefix}.{dead.pid}.abcd"
    leftover.mkdir()
    alive = tmp_path / f"{prefix}.{os.getpid()}.ef01"
    alive.mkdir()
    temporary_path(destination)
    assert not leftover.exists() and alive.exists()
    assert Path(destination).is_dir()
