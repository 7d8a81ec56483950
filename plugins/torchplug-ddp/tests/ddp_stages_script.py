"""Several stages in one script (copied into a test's tmp_path and run there; see test_ddp_stages.py).

``python ddp_stages_script.py '<json config>' <out dir>``; the config holds:

* ``scenario``: ``fit_validate``, ``fit_test``, ``fit_validate_test``, ``fit_fit_one_trainer`` (the second ``fit`` of the same trainer
  trains two more epochs: ``max_epochs`` raised from 2 to 4) or ``fit_fit_two_trainers`` (a second Trainer fits the
  same model for two more epochs);
* ``seed``: whether the script calls ``seed_everything`` (without it every process starts from other weights, and
  DistributedDataParallel must make them rank 0's);
* ``trainer``: Trainer keywords; ``batch_size``.

Each process writes ``rank<N>.json`` (for ``ddp_spawn`` the caller writes ``caller.json``): its initial weights and,
after every stage, the counters, weights, the stage's answer and the sample indices each epoch showed it.
"""

import json
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Module, Trainer
from torchplug.testing import QUIET, regression_data


class Net(Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen = {}

    def _loss(self, batch):
        x, y, index = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(str(self.current_epoch), []).extend(int(i) for i in batch[2])
        loss = self._loss(batch)
        self.log("loss_synced", loss, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch), sync_dist=True)
        self.log("test_samples", torch.tensor(float(len(batch[2]))), sync_dist=True, reduce_fx="sum")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def dataset(n=64):
    data = regression_data(n)
    return TensorDataset(*data.tensors, torch.arange(n))


def weights(model):
    return [float(v) for p in model.parameters() for v in p.detach().double().flatten()]


def load_weights(model, values):
    with torch.no_grad():
        flat = torch.tensor(values, dtype=torch.float64)
        for p in model.parameters():
            p.copy_(flat[: p.numel()].view_as(p))
            flat = flat[p.numel() :]


def main(config, out, initial=None):
    """Run the scenario; ``initial``: start from these weights (the reference run starts from rank 0's)."""
    if config["seed"]:
        torchplug.seed_everything(0)
    model = Net()
    if initial is not None:
        load_weights(model, initial)
    report = {"initial": weights(model), "stages": []}
    kwargs = {**QUIET, "max_epochs": 2, **config["trainer"], "default_root_dir": out}
    loader = DataLoader(dataset(), batch_size=config["batch_size"])

    def record(stage, trainer, answer=None):
        report["stages"].append({
            "stage": stage, "answer": answer, "global_step": trainer.global_step,
            "current_epoch": trainer.current_epoch, "world_size": trainer.world_size, "weights": weights(model),
            "seen": model.seen,
        })  # fmt: skip
        model.seen = {}

    trainer = Trainer(**kwargs)
    trainer.fit(model, loader)
    record("fit", trainer)
    scenario = config["scenario"]
    if scenario in ("fit_validate", "fit_test", "fit_validate_test"):
        if "validate" in scenario:
            record("validate", trainer, trainer.validate(model, loader))
        if "test" in scenario:
            record("test", trainer, trainer.test(model, loader))
    elif scenario == "fit_fit_one_trainer":
        trainer.max_epochs = 4
        trainer.fit(model, loader)
        record("fit", trainer)
    elif scenario == "fit_fit_two_trainers":
        trainer = Trainer(**kwargs)
        trainer.fit(model, loader)
        record("fit", trainer)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    report["global_rank"], report["pid"] = trainer.global_rank, os.getpid()
    return report


if __name__ == "__main__":
    config, out = json.loads(sys.argv[1]), sys.argv[2]
    report = main(config, out)
    name = "caller.json" if config["trainer"].get("strategy") == "ddp_spawn" else f"rank{report['global_rank']}.json"
    with open(os.path.join(out, name), "w") as fh:
        json.dump(report, fh)
