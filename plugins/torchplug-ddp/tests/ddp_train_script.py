"""A small training run that every end-to-end test of torchplug-ddp starts (copied into the test's tmp_path).

``python ddp_train_script.py '<json config>' <out dir>``: each process writes ``rank<N>.json`` with what it saw
(sample indices per epoch, its sampler), what it ended with (weights, callback_metrics, among them the size of the
process group and whether DistributedDataParallel wrapped the step) and its place in the job;
the calling process writes ``caller.json`` (for ddp_spawn: what came back to it).
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Module, Trainer
from torchplug.testing import QUIET, regression_data


class Net(Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen = {}
        self.grad_sync = []  # per micro-batch: whether DDP all-reduces its gradients in backward

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen.setdefault(self.current_epoch, []).extend(int(i) for i in index)
        self.grad_sync.append(bool(getattr(self.trainer.model, "require_backward_grad_sync", True)))
        loss = torch.nn.functional.mse_loss(self.layer(x).float(), y.float())
        me = torch.tensor(float(self.global_rank + 1))
        for op in ("mean", "sum", "max", "min"):
            self.log(f"rank_{op}", me, sync_dist=True, reduce_fx=op)
        self.log("loss_synced", loss, sync_dist=True)
        self.log("rank_unsynced", me)
        # what the step runs in: a process group (of one, for devices=1) and DistributedDataParallel
        self.log("process_group_size", float(dist.get_world_size()) if dist.is_initialized() else 0.0)
        self.log("wrapped_in_ddp", float(isinstance(self.trainer.model, DistributedDataParallel)))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def dataset(n=64):
    data = regression_data(n)
    return TensorDataset(*data.tensors, torch.arange(n))


def main(config, out):
    torchplug.seed_everything(0)
    model = Net()
    kwargs = {"max_epochs": 2, **{k: v for k, v in config.items() if k not in ("batch_size", "shuffle")}}
    trainer = Trainer(**{**QUIET, **kwargs, "default_root_dir": out})
    loader = DataLoader(dataset(), batch_size=config["batch_size"], shuffle=config.get("shuffle", False))
    trainer.fit(model, loader)
    return trainer, model


def weights(model):
    return [float(v) for p in model.parameters() for v in p.detach().double().flatten()]


if __name__ == "__main__":
    config, out = json.loads(sys.argv[1]), sys.argv[2]
    trainer, model = main(dict(config), out)
    report = {
        "global_rank": trainer.global_rank,
        "local_rank": trainer.local_rank,
        "node_rank": trainer.node_rank,
        "world_size": trainer.world_size,
        "environment": trainer.environment_name,
        "weights": weights(model),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "seen": model.seen,
        "grad_sync": model.grad_sync,
        "pid": os.getpid(),
    }
    spawned = config.get("strategy") == "ddp_spawn"
    name = "caller.json" if spawned else f"rank{trainer.global_rank}.json"
    with open(os.path.join(out, name), "w") as fh:
        json.dump(report, fh)
