"""Training jobs for torchplug-fsdp's tests: several per launch, so that one pair of processes serves many checks.

``python fsdp_jobs.py <jobs.json> <out dir>`` (copied into the test's tmp_path): every process runs the jobs in
order, each a Trainer and a ``fit``, and writes ``<job>.rank<N>.json`` with what it ended with: the full weights
(gathered), the bytes of its local shards, dtypes, metrics, collective counts. A job may kill its own rank in the
middle of a step. The tests call :func:`run_job` in their own process for the single-process references.

A job is a dict: ``name``; ``trainer`` (Trainer keywords; ``auto_wrap_policy``/``activation_checkpointing_policy``
as class names); ``model`` (``Net`` keywords); ``data`` (``n``, ``batch_size``, ``shuffle``); ``checkpoints``
(ModelCheckpoint keywords, ``dirpath`` relative to the out dir); ``full_save_at`` (``{"step", "path"}``: also
save a one-file checkpoint then); ``ckpt_path``; ``kill`` (``{"rank", "step"}``); ``inject_inf``
(``{"rank", "step"}``: an inf in that rank's gradient, and the loss scale and parameter changes recorded
per step).
"""

import json
import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

import torchplug
from torchplug import Callback, Module, Trainer
from torchplug.callbacks import ModelCheckpoint
from torchplug.testing import QUIET, regression_data


class Block(nn.Module):
    def __init__(self, width, dropout):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.lin(x)))


class Net(Module):
    """Input layer, residual blocks, head, and a bare parameter of the module itself (it lands in the root unit)."""

    def __init__(self, width=16, blocks=3, dropout=0.0, optimizer="adam", lr=0.01, manual=False, kill=None,
                 inject_inf=None):  # fmt: skip
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.scale = nn.Parameter(torch.ones(width))
        self.blocks = nn.ModuleList(Block(width, dropout) for _ in range(blocks))
        self.head = nn.Linear(width, 1)
        self.optimizer_name, self.lr, self.kill, self.inject_inf = optimizer, lr, kill, inject_inf
        self.automatic_optimization = not manual

    def forward(self, x):
        x = self.inp(x) * self.scale
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def training_step(self, batch, batch_idx):
        kill = self.kill
        if kill and self.global_rank == kill["rank"] and self.global_step == kill["step"]:
            with open(os.path.join(kill["dir"], f"killed.rank{self.global_rank}.pid"), "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        loss = nn.functional.mse_loss(self(x).float(), y.float())
        self.log("loss", loss, sync_dist=True)
        me = torch.tensor(float(self.global_rank + 1))
        self.log("rank_sum", me, sync_dist=True, reduce_fx="sum")
        self.log("rank_max", me, sync_dist=True, reduce_fx="max")
        self.log("rank_unsynced", me)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=0.05, gradient_clip_algorithm="norm")
        optimizer.step()
        return None

    def validation_step(self, batch, batch_idx):  # validate() needs one (as Lightning); it logs nothing
        self(batch[0])

    def on_after_backward(self):
        inject = self.inject_inf
        if inject and self.global_rank == inject["rank"] and self.global_step == inject["step"]:
            for p in self.parameters():
                grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                if grad is not None and grad.numel():
                    grad.view(-1)[0] = float("inf")
                    break

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


POLICY_CLASSES = {"Block": Block, "Linear": nn.Linear, "ReLU": nn.ReLU, "Dropout": nn.Dropout}


def full(tensor):
    """The whole tensor on every rank (collective for a DTensor)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def weights(model):
    return [v for p in model.parameters() for v in full(p.detach()).double().cpu().flatten().tolist()]


class FullSaveAt(Callback):
    """Saves a one-file (``state_dict_type="full"``) checkpoint once, next to the sharded ones."""

    def __init__(self, step, path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            strategy = trainer.strategy
            before, strategy.state_dict_type = strategy.state_dict_type, "full"
            try:
                trainer.save_checkpoint(self.path)
            finally:
                strategy.state_dict_type = before


class Record(Callback):
    """What happened per step: the loss scale (16-mixed), whether the parameters moved."""

    def __init__(self):
        self.scales, self.moved, self.before = [], [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = weights(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))
        self.moved.append(weights(module) != self.before)


class Counter:
    """Counts FSDP2's collectives (it calls torch.distributed's *_single functions by attribute)."""

    NAMES = ("all_gather_single", "reduce_scatter_single")

    def __init__(self):
        import torch.distributed as dist

        self.dist, self.counts, self.saved = dist, dict.fromkeys(self.NAMES, 0), {}

    def __enter__(self):
        for name in self.NAMES:
            original = self.saved[name] = getattr(self.dist, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(self.dist, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(self.dist, name, original)


def shard_bytes(model, trainer):
    """Bytes this rank holds of parameters, gradients and optimizer state, and of the unsharded whole."""

    def nbytes(t):
        return t.numel() * t.element_size()

    params = [p for p in model.parameters()]
    out = {
        "params": sum(nbytes(local(p)) for p in params),
        "params_total": sum(p.numel() * p.element_size() for p in params),
        "grads": sum(nbytes(local(p.grad)) for p in params if p.grad is not None),
        "grads_total": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "state": 0,
        "state_total": 0,
    }
    for optimizer in trainer.optimizers:
        for entry in optimizer.state.values():
            for value in entry.values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:  # Adam's scalar step is replicated
                    out["state"] += nbytes(local(value))
                    out["state_total"] += value.numel() * value.element_size()
    return out


def run_job(job, out):
    """Run one job in this process (one rank of a launched job, or the single-process reference)."""
    torchplug.seed_everything(job.get("seed", 0))
    model_options = dict(job.get("model", {}))
    if job.get("kill"):
        model_options["kill"] = {**job["kill"], "dir": out}
    if job.get("inject_inf"):
        model_options["inject_inf"] = job["inject_inf"]
    model = Net(**model_options)
    trainer_options = dict(job["trainer"])
    for option in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if isinstance(trainer_options.get(option), str):
            trainer_options[option] = {POLICY_CLASSES[trainer_options[option]]}
    record = Record()
    callbacks = [record] if job.get("inject_inf") else []
    checkpoints = job.get("checkpoints", [])
    for options in checkpoints:
        callbacks.append(ModelCheckpoint(**{**options, "dirpath": os.path.join(out, options["dirpath"])}))
    if job.get("full_save_at"):
        spec = job["full_save_at"]
        callbacks.append(FullSaveAt(spec["step"], os.path.join(out, spec["path"])))
    kwargs = {**QUIET, "max_epochs": 2, "default_root_dir": out, **trainer_options, "callbacks": callbacks}
    kwargs["enable_checkpointing"] = bool(checkpoints)
    trainer = Trainer(**kwargs)
    data = job.get("data", {})
    loader = DataLoader(regression_data(data.get("n", 64)), batch_size=data.get("batch_size", 4),
                        shuffle=data.get("shuffle", False))  # fmt: skip
    ckpt_path = job.get("ckpt_path")
    if ckpt_path and ckpt_path not in ("last", "best"):
        ckpt_path = os.path.join(out, ckpt_path)
    counter = Counter()
    with counter:
        trainer.fit(model, loader, ckpt_path=ckpt_path)
    first = next(model.parameters())
    state = next(iter(trainer.optimizers[0].state.values()), {}) if trainer.optimizers else {}
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "environment": trainer.environment_name,
        "global_step": trainer.global_step,
        "weights": weights(model),
        "names": [n for n, _ in model.named_parameters()],
        "bytes": shard_bytes(model, trainer),
        "param_type": type(first).__name__,
        "param_dtype": str(first.dtype),
        "grad_dtype": str(first.grad.dtype) if first.grad is not None else None,
        "state_dtypes": sorted({str(v.dtype) for v in state.values() if isinstance(v, torch.Tensor) and v.dim()}),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "collectives": counter.counts,
        "scales": record.scales,
        "moved": record.moved,
        "checkpoints": [
            {"files": sorted(os.listdir(c.dirpath)), "best": c.best_model_path, "last": c.last_model_path,
             "top": sorted(c.best_k_models)}
            for c in trainer.checkpoint_callbacks
        ],  # fmt: skip
        "ckpt_path": trainer.ckpt_path,
    }


if __name__ == "__main__":
    jobs, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
    for job in jobs:
        report = run_job(job, out)
        with open(os.path.join(out, f"{job['name']}.rank{report['rank']}.json"), "w") as fh:
            json.dump(report, fh)
