"""A small training run of the core's own ``ProcessGroupStrategy`` (copied into a test's tmp_path and run there).

``python distributed_train_script.py '<json config>' <out dir>``. The config holds Trainer keywords, and:

* ``strategy``: ``"process_group"`` is ``ProcessGroupStrategy(start_method=config["start_method"])``, the core's
  strategy without a wrapper; the module then averages its gradients itself (``torchplug_all_reduce``, after
  backward), so the run is data-parallel and ends with the weights of one process on the whole batch. Any other
  name is an installed strategy (``ddp_cpu``), which synchronises gradients its own way.
* ``batch_size``, ``shuffle``; ``stages``: what the script runs, in order: ``"fit"``, ``"fit_again"`` (a second
  ``fit`` of the same trainer: its ``max_epochs`` are done, so nothing more is trained), ``"validate"``.

Each process writes ``rank<N>.json`` with its place in the job, what it saw of the process group, its weights and
metrics; a caller that ran no stage itself (``start_method`` spawn or fork) writes ``caller.json`` with what came
back to it.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Module, Trainer
from torchplug.distributed import ProcessGroupStrategy
from torchplug.testing import QUIET, regression_data


class Net(Module):
    def __init__(self, average_gradients=False):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.average_gradients = average_gradients

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        trainer = self.trainer
        me = torch.tensor(float(self.global_rank + 1))
        self.log("rank_sum", me, sync_dist=True, reduce_fx="sum")
        self.log("rank_unsynced", me)
        ranks = trainer.hook.torchplug_all_gather(trainer=trainer, tensor=torch.tensor([self.global_rank]))
        self.log("gathered_ranks_ok", float(ranks.flatten().tolist() == list(range(trainer.world_size))))
        self.log("process_group_size", float(dist.get_world_size()) if dist.is_initialized() else 0.0)
        return loss

    def on_after_backward(self):
        if self.average_gradients:  # what DDP does in backward, with the strategy's own collective
            for p in self.parameters():
                p.grad.copy_(self.trainer.hook.torchplug_all_reduce(trainer=self.trainer, tensor=p.grad, op="mean"))

    def validation_step(self, batch, batch_idx):
        x, y, index = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def dataset(n=64):
    data = regression_data(n)
    return TensorDataset(*data.tensors, torch.arange(n))


def trainer_arguments(config):
    kwargs = {k: v for k, v in config.items() if k not in ("batch_size", "shuffle", "stages", "start_method")}
    if kwargs.get("strategy") == "process_group":
        kwargs["strategy"] = ProcessGroupStrategy(start_method=config.get("start_method"))
    return {**QUIET, "max_epochs": 2, **kwargs}


def main(config, out):
    torchplug.seed_everything(0)
    model = Net(average_gradients=config.get("strategy") == "process_group")
    trainer = Trainer(**trainer_arguments(config), default_root_dir=out)
    loader = DataLoader(dataset(), batch_size=config["batch_size"], shuffle=config.get("shuffle", False))
    results = {}
    for stage in config.get("stages", ["fit"]):
        if stage == "fit":
            trainer.fit(model, loader)
        elif stage == "fit_again":
            trainer.fit(model, loader)
        elif stage == "validate":
            results["validate"] = trainer.validate(model, loader)
        results[f"after_{stage}"] = {
            "global_step": trainer.global_step,
            "current_epoch": trainer.current_epoch,
            "weights": weights(model),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
    return trainer, model, results


def weights(model):
    return [float(v) for p in model.parameters() for v in p.detach().double().flatten()]


if __name__ == "__main__":
    config, out = json.loads(sys.argv[1]), sys.argv[2]
    trainer, model, results = main(dict(config), out)
    report = {
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "world_size": trainer.world_size,
        "environment": trainer.environment_name,
        "process_group_after_the_run": dist.is_initialized(),
        "weights": weights(model),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "results": results,
        "pid": os.getpid(),
    }
    spawned = config.get("start_method") in ("spawn", "fork") or config.get("strategy") == "ddp_spawn"
    name = "caller.json" if spawned else f"rank{trainer.global_rank}.json"
    with open(os.path.join(out, name), "w") as fh:
        json.dump(report, fh)
