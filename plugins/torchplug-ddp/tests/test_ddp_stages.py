"""Several stages in one script under ddp_cpu with two processes, with and without ``seed_everything``: fit then
validate then test, two fits on one Trainer, two fits on two Trainers.

The other process runs the whole script too, so every stage meets it again; the process group of the first stage
is kept and reused by the next (``torchplug.distributed.ProcessGroupStrategy``). Each script runs in a fresh
interpreter with a timeout, so a hang fails the test; it must end with no process left behind, and each stage with
what one process on the whole batch would have ended with (``ddp_stages_script.py`` writes what each rank saw)."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from ddp_test_support import processes_mentioning, run

SCRIPT = Path(__file__).with_name("ddp_stages_script.py")
SCENARIOS = ["fit_validate_test", "fit_fit_one_trainer", "fit_fit_two_trainers"]
pytestmark = pytest.mark.timeout(240)


def run_script(tmp_path, python, **config):
    script = tmp_path / "stages.py"
    shutil.copy(SCRIPT, script)
    run([python, str(script), json.dumps(config), str(tmp_path)], tmp_path, timeout=180).check()
    assert processes_mentioning(str(tmp_path)) == []
    return {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}


def reference(tmp_path, initial, **config):
    """The same scenario in this process, on one device with the whole batch (both processes' batches), from the
    given initial weights."""
    spec = importlib.util.spec_from_file_location("ddp_stages_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "reference"
    out.mkdir()
    single = {"strategy": "single_device", "accelerator": "cpu", "devices": 1}
    return module.main({**config, "batch_size": 2 * config["batch_size"], "trainer": single}, str(out), initial=initial)


def close(a, b):
    return torch.allclose(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6)


def check_against_the_reference(got, expected):
    assert [s["stage"] for s in got["stages"]] == [s["stage"] for s in expected["stages"]]
    for stage, want in zip(got["stages"], expected["stages"]):
        assert (stage["global_step"], stage["current_epoch"]) == (want["global_step"], want["current_epoch"]), stage["stage"]
        assert close(stage["weights"], want["weights"]), (stage["stage"], stage["weights"], want["weights"])
        if want["answer"] is not None:  # validate/test: metrics over every process's shard = over the whole set
            [metrics], [want_metrics] = stage["answer"], want["answer"]
            assert metrics.keys() == want_metrics.keys()
            for key, value in metrics.items():
                assert abs(value - want_metrics[key]) < 1e-6, (key, value, want_metrics[key])


@pytest.mark.parametrize("seed", [True, False], ids=["seed_everything", "no_seed"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_stages_in_one_script_under_ddp_cpu(tmp_path, python, scenario, seed):
    config = {"scenario": scenario, "seed": seed, "batch_size": 4, "trainer": {"strategy": "ddp_cpu", "accelerator": "cpu", "devices": 2}}
    reports = run_script(tmp_path, python, **config)
    assert sorted(reports) == ["rank0", "rank1"]
    r0, r1 = reports["rank0"], reports["rank1"]
    assert r0["pid"] != r1["pid"]
    if seed:
        assert r0["initial"] == r1["initial"]
    else:  # each process drew its own initial weights; DDP trains from rank 0's everywhere
        assert r0["initial"] != r1["initial"]
    for a, b in zip(r0["stages"], r1["stages"]):
        assert a["world_size"] == b["world_size"] == 2
        assert (a["global_step"], a["weights"], a["answer"]) == (b["global_step"], b["weights"], b["answer"])
        for epoch, indices in a["seen"].items():  # every fit: each rank its own interleaved half, every epoch
            assert indices == list(range(0, 64, 2)) and b["seen"][epoch] == list(range(1, 64, 2))
    fits = [s for s in r0["stages"] if s["stage"] == "fit"]
    assert [sorted(s["seen"]) for s in fits] == (
        [["0", "1"], ["2", "3"]] if scenario == "fit_fit_one_trainer"
        else [["0", "1"], ["0", "1"]] if scenario == "fit_fit_two_trainers"
        else [["0", "1"]]
    )  # fmt: skip
    if scenario == "fit_validate_test":
        assert [s["stage"] for s in r0["stages"]] == ["fit", "validate", "test"]
        assert r0["stages"][2]["answer"][0]["test_samples"] == 64.0  # every sample tested once, by one rank
    check_against_the_reference(r0, reference(tmp_path, r0["initial"], **config))


def test_stages_in_one_script_under_ddp_spawn(tmp_path, python):
    """Each stage spawns its processes anew; what each stage leaves comes back to the caller before the next."""
    config = {"scenario": "fit_validate_test", "seed": True, "batch_size": 4,
              "trainer": {"strategy": "ddp_spawn", "accelerator": "cpu", "devices": 2}}  # fmt: skip
    reports = run_script(tmp_path, python, **config)
    assert sorted(reports) == ["caller"]
    got = reports["caller"]
    assert [s["stage"] for s in got["stages"]] == ["fit", "validate", "test"]
    check_against_the_reference(got, reference(tmp_path, got["initial"], **config))
