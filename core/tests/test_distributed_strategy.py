"""``torchplug.distributed.ProcessGroupStrategy`` (``_strategy.py``) for real, without any plugin: the three start
methods, a world of one, a process group kept for the next stage of the script, and what a spawned run hands back.

Every run is a fresh interpreter (``distributed_train_script.py``) with a timeout, so a hang fails the test. The
module averages its gradients with the strategy's ``torchplug_all_reduce``, so a run of N processes on batch b must
end with the weights of one process on batch N*b."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from distributed_test_support import PYTHON, processes_mentioning, run, write_script

from torchplug import MisconfigurationError
from torchplug.distributed import ProcessGroupStrategy

SCRIPT = Path(__file__).with_name("distributed_train_script.py")
pytestmark = pytest.mark.timeout(240)


def train(tmp_path, **config):
    script = tmp_path / "train.py"
    shutil.copy(SCRIPT, script)
    ran = run([PYTHON, str(script), json.dumps(config), str(tmp_path)], tmp_path, timeout=180).check()
    assert processes_mentioning(str(tmp_path)) == []
    return ran, {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}


def reference(tmp_path, **config):
    """The same stages in this process, on one device with the whole batch."""
    spec = importlib.util.spec_from_file_location("distributed_train_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "reference"
    out.mkdir()
    _, _, results = module.main({"strategy": "single_device", "accelerator": "cpu", "devices": 1, **config}, str(out))
    return results


def close(a, b):
    return torch.allclose(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("start_method", "devices"),
    [("popen", 2), ("spawn", 2), ("fork", 2), ("popen", 1), ("spawn", 1)],
)
def test_fit_fit_again_and_validate_in_one_script(tmp_path, start_method, devices):
    stages = ["fit", "fit_again", "validate"]
    _, reports = train(tmp_path, strategy="process_group", start_method=start_method, accelerator="cpu",
                       devices=devices, batch_size=8 // devices, stages=stages)  # fmt: skip
    if start_method == "popen":
        assert sorted(reports) == [f"rank{r}" for r in range(devices)]
        for rank, report in enumerate(reports[f"rank{r}"] for r in range(devices)):
            assert (report["global_rank"], report["world_size"], report["environment"]) == (rank, devices, "local")
            assert report["process_group_after_the_run"]  # kept for a next stage, gone at exit
        if devices == 2:
            assert reports["rank0"]["pid"] != reports["rank1"]["pid"]
            r0, r1 = reports["rank0"]["results"], reports["rank1"]["results"]
            assert r1["after_fit"]["metrics"].pop("rank_unsynced") == 2.0  # each rank its own unsynced value
            r0["after_fit"]["metrics"].pop("rank_unsynced")
            r0["after_fit_again"]["metrics"].pop("rank_unsynced", None)
            r1["after_fit_again"]["metrics"].pop("rank_unsynced", None)
            assert r0 == r1  # the same weights, counters and synchronised metrics after every stage
            reports["rank0"] = json.loads((tmp_path / "rank0.json").read_text())
        got = reports["rank0"]
    else:  # what came back to the caller, which never joined a process group
        assert sorted(reports) == ["caller"]
        got = reports["caller"]
        assert not got["process_group_after_the_run"]
    fitted = got["results"]["after_fit"]
    # a process group of `devices` processes in every stage, world of one included; collectives through it
    assert fitted["metrics"]["process_group_size"] == devices
    assert fitted["metrics"]["gathered_ranks_ok"] == 1.0
    assert fitted["metrics"]["rank_sum"] == sum(range(1, devices + 1))
    assert fitted["metrics"]["rank_unsynced"] == 1.0  # rank 0's own value
    expected = reference(tmp_path, batch_size=8, stages=stages)
    assert (fitted["global_step"], fitted["current_epoch"]) == (expected["after_fit"]["global_step"], 2) == (16, 2)
    assert close(fitted["weights"], expected["after_fit"]["weights"])
    # a second fit of the same trainer continues where the first ended: max_epochs are done, nothing is trained
    again = got["results"]["after_fit_again"]
    assert (again["global_step"], again["current_epoch"]) == (16, 2)
    assert again["weights"] == fitted["weights"]
    # validation of the trained model over every process's shard equals validation on the whole set
    [validated] = got["results"]["validate"]
    assert abs(validated["val_loss"] - expected["validate"][0]["val_loss"]) < 1e-6


SPAWN_EXIT = """
import sys
from torch.utils.data import DataLoader
from torchplug import Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET, BoringModel, regression_loader

class Quits(BoringModel):
    def training_step(self, batch, batch_idx):
        sys.exit(0)  # rank 0 leaves mid-stage, successfully as far as its exit code says

if __name__ == "__main__":
    trainer = Trainer(strategy=ProcessGroupStrategy(start_method="spawn"), accelerator="cpu", devices=1, **QUIET)
    trainer.fit(Quits(), regression_loader())
    print("fit returned", flush=True)
"""


def test_a_spawned_rank_0_that_ends_without_finishing_is_an_error_not_a_silent_none(tmp_path):
    script = write_script(tmp_path, SPAWN_EXIT, "quits.py")
    ran = run([PYTHON, str(script)], tmp_path, timeout=120)
    assert ran.returncode != 0 and "fit returned" not in ran.stdout
    assert "ProcessFailedError: rank 0 (pid" in ran.output and "exited with code 0 without finishing its stage" in ran.output
    assert processes_mentioning(str(tmp_path)) == []


def test_start_methods():
    assert ProcessGroupStrategy().start_method == "popen"
    assert ProcessGroupStrategy(start_method="fork").start_method == "fork"
    with pytest.raises(MisconfigurationError, match="start_method='forkserver'.*refused"):
        ProcessGroupStrategy(start_method="forkserver")
    with pytest.raises(MisconfigurationError, match="timeout=0"):
        ProcessGroupStrategy(timeout=0)


def test_a_pickled_strategy_carries_its_options_and_no_run_state():
    import pickle

    strategy = ProcessGroupStrategy(process_group_backend="gloo", timeout=60, start_method="spawn")
    strategy._epoch_samplers.append(object())  # something only a run holds
    copy = pickle.loads(pickle.dumps(strategy))
    assert (copy.process_group_backend, copy.timeout.total_seconds(), copy.start_method) == ("gloo", 60, "spawn")
    assert copy._epoch_samplers == []
