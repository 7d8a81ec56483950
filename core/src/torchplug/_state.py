"""A run's state: what a checkpoint holds, how it is made and restored, and the hand-back of spawned runs.

The core only orchestrates (layout in docs/checkpoints.md): the strategy produces and restores the module's and
optimizers' state and decides who writes what where; every plugin produces its own state on every rank, and the
checkpoint keeps each rank's.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _profiling
from torchplug._errors import MisconfigurationError

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug.trainer import Trainer

log = logging.getLogger("torchplug")

CHECKPOINT_FORMAT = 2


@dataclass
class Resume:
    """What a restored ``fit`` still has to apply once it starts training."""

    rng_states: dict[str, Any] | None
    callback_metrics: dict[str, Any]


# ==================================================================================================== saving
def dump_checkpoint(trainer: Trainer, weights_only: bool) -> dict[str, Any]:
    """This rank's view of the run, as a checkpoint dictionary (the strategy decides how it is written)."""
    from torchplug import __version__

    module = trainer.lightning_module
    if module is None:
        raise RuntimeError("save_checkpoint() needs a model: call it during or after fit()")
    hook = trainer.hook
    checkpoint: dict[str, Any] = {
        "torchplug_checkpoint": CHECKPOINT_FORMAT,
        "torchplug_version": __version__,
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "state_dict": hook.torchplug_model_state_dict(trainer=trainer, module=module),
        "hyper_parameters": _safe_hparams(module.hparams),
        "backends": {"accelerator": trainer.accelerator_name, "strategy": trainer.strategy_name,
                     "precision": trainer.precision_name},  # fmt: skip
    }
    if not weights_only:
        progress = trainer.progress
        mid_epoch = progress.phase == "train" and progress.batches_done > 0
        checkpoint["loops"] = {k: v for k, v in asdict(progress).items() if k != "epoch_start_rng"}
        checkpoint["callback_metrics"] = {k: v.detach().cpu() for k, v in trainer.callback_metrics.items()}
        checkpoint["optimizer_states"] = [
            hook.torchplug_optimizer_state_dict(trainer=trainer, optimizer=opt) for opt in trainer.optimizers
        ]
        checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        checkpoint["callbacks"] = {c.state_key: c.state_dict() for c in trainer.callbacks}
        plugins: dict[str, Any] = {}
        for answer in hook.torchplug_state_dict(trainer=trainer):
            if answer:
                plugins.update(answer)
        # What differs between processes; the save hook gathers every rank's entry into this list.
        checkpoint["ranks"] = [{
            "plugins": plugins,
            "rng_states": get_rng_states(trainer),
            "epoch_start_rng": progress.epoch_start_rng if mid_epoch else None,
        }]  # fmt: skip
        if trainer.datamodule is not None:
            checkpoint["datamodule"] = _profiling.call_datamodule(trainer, "state_dict")
    for callback in trainer.callbacks:  # Lightning's order: callbacks, then the module
        callback.on_save_checkpoint(trainer, module, checkpoint)
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def save_checkpoint(trainer: Trainer, path: str, weights_only: bool) -> None:
    checkpoint = dump_checkpoint(trainer, weights_only)
    trainer.hook.torchplug_save_checkpoint(trainer=trainer, checkpoint=checkpoint, path=path)
    trainer.barrier("save_checkpoint")


# ==================================================================================================== which file
def resolve_ckpt_path(trainer: Trainer, ckpt_path: Any) -> str:
    if ckpt_path in ("last", "best"):
        callback = trainer.checkpoint_callback
        found = None
        if callback is not None:
            found = callback.last_model_path if ckpt_path == "last" else callback.best_model_path
        if not found and ckpt_path == "last":
            candidates = sorted(Path(trainer.default_root_dir).glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
            found = str(candidates[-1]) if candidates else None
        if not found and ckpt_path == "best":
            found = _best_from_disk(trainer)
        if not found:
            raise MisconfigurationError(
                f"ckpt_path={ckpt_path!r}: no {ckpt_path} checkpoint found (looked in the checkpoint callback and "
                f"under default_root_dir={trainer.default_root_dir!r}); pass a path"
            )
        return str(found)
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        raise MisconfigurationError(f"ckpt_path={path!r}: no such checkpoint")
    return path


def _best_from_disk(trainer: Trainer) -> str | None:
    from torchplug._checkpoint import load_checkpoint

    for path in sorted(Path(trainer.default_root_dir).glob("**/*.ckpt"), key=lambda p: -p.stat().st_mtime):
        try:
            state = load_checkpoint(path).get("callbacks", {})
        except MisconfigurationError:  # not one of ours, or unreadable: look further
            continue
        for key, value in state.items():
            if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
                if os.path.exists(value["best_model_path"]):
                    return value["best_model_path"]
    return None


# ==================================================================================================== restoring
def restore(loop: Loop, path: str) -> None:
    """Load ``path`` into the set-up run: weights always; for ``fit`` everything needed to continue exactly."""
    trainer, module, hook = loop.trainer, loop.module, loop.trainer.hook
    checkpoint = hook.torchplug_load_checkpoint(trainer=trainer, path=path)
    trainer.ckpt_path = path
    state = checkpoint.get("state_dict")
    if state is None:
        raise MisconfigurationError(f"ckpt_path={path!r} holds no 'state_dict'; it is not a torchplug checkpoint")
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise MisconfigurationError(
            f"ckpt_path={path!r} does not fit {type(module).__name__}: missing keys {missing}, unexpected keys "
            f"{unexpected}"
        )
    module.on_load_checkpoint(checkpoint)  # Lightning's order: the module, then callbacks
    for callback in trainer.callbacks:
        callback.on_load_checkpoint(trainer, module, checkpoint)
    try:
        hook.torchplug_load_model_state_dict(trainer=trainer, module=module, state_dict=state)
    except RuntimeError as err:
        raise MisconfigurationError(f"ckpt_path={path!r} does not fit {type(module).__name__}: {err}") from None
    if loop.stage != "fit":
        return
    if "loops" not in checkpoint:
        raise MisconfigurationError(
            f"ckpt_path={path!r} was saved with weights_only=True and cannot resume training; load its weights with "
            f"{type(module).__name__}.load_state_dict(torchplug.load_checkpoint(path)['state_dict']) instead"
        )
    saved = checkpoint["optimizer_states"]
    if len(saved) != len(trainer.optimizers):
        raise MisconfigurationError(
            f"ckpt_path={path!r} holds {len(saved)} optimizer states but configure_optimizers returned "
            f"{len(trainer.optimizers)}"
        )
    for optimizer, optimizer_state in zip(trainer.optimizers, saved):
        hook.torchplug_load_optimizer_state_dict(trainer=trainer, optimizer=optimizer, state_dict=optimizer_state)
    for config, scheduler_state in zip(trainer.lr_scheduler_configs, checkpoint["lr_schedulers"]):
        config.scheduler.load_state_dict(scheduler_state)
    callback_states = dict(checkpoint.get("callbacks", {}))
    for callback in trainer.callbacks:
        if callback.state_key in callback_states:
            callback.load_state_dict(callback_states.pop(callback.state_key))
    dropped = [f"callback {key!r}" for key, value in callback_states.items() if value]
    if "datamodule" in checkpoint:
        if trainer.datamodule is not None:
            _profiling.call_datamodule(trainer, "load_state_dict", checkpoint["datamodule"])
        elif checkpoint["datamodule"]:
            dropped.append("the datamodule's state (no datamodule in this run)")
    own = _this_rank(trainer, _ranks_of(checkpoint), path)
    states = _PluginStates(own["plugins"])
    hook.torchplug_load_state_dict(trainer=trainer, states=states)
    dropped += [f"plugin state {key!r}" for key in states.unread()]
    if dropped:
        warnings.warn(
            f"ckpt_path={path!r}: nothing in this run restores {', '.join(dropped)}; that state is dropped",
            UserWarning,
            stacklevel=2,
        )
    loops = checkpoint["loops"]
    trainer.global_step = checkpoint["global_step"]
    trainer.callback_metrics.update(checkpoint.get("callback_metrics", {}))
    progress = trainer.progress
    progress.total_batches = loops.get("total_batches", 0)
    progress.validated_at = loops.get("validated_at", -1)
    if loops["phase"] == "complete":  # only on_train_epoch_end hooks were left: start the next epoch
        trainer.current_epoch = checkpoint["epoch"] + 1
        progress.phase, progress.batches_done = "train", 0
    else:
        trainer.current_epoch = checkpoint["epoch"]
        progress.phase, progress.batches_done = loops["phase"], loops["batches_done"]
        progress.epoch_start_rng = own["epoch_start_rng"]
    loop.resume = Resume(rng_states=own["rng_states"], callback_metrics=dict(trainer.callback_metrics))


def resumed_batches(loop: Loop, batches: Iterator[tuple[Any, bool]], resume: Resume) -> Iterator[tuple[Any, bool]]:
    """The rest of an interrupted epoch: its data order replayed up to the checkpoint, then the RNG it had.

    Lazy, so that the loader is iterated after the epoch-start hooks, as in the interrupted run.
    """
    progress, trainer = loop.trainer.progress, loop.trainer
    done = progress.batches_done
    for _ in range(done):
        next(batches, None)
    set_rng_states(trainer, resume.rng_states)
    # A checkpoint from on_train_batch_end precedes that batch's validation: run it if it was due.
    if progress.validated_at != progress.total_batches and loop._val_due(done - 1, done == trainer.num_training_batches):
        loop.validate_during_fit()
    yield from batches


class _PluginStates(Mapping[str, Any]):
    """This rank's saved plugin states, remembering which keys a plugin read."""

    def __init__(self, states: dict[str, Any]) -> None:
        self._states = states
        self._read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        value = self._states[key]
        self._read.add(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def unread(self) -> list[str]:
        return sorted(k for k in self._states if k not in self._read)


def _ranks_of(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-rank section; a format 1 checkpoint kept rank 0's plugin state and generators at the top level."""
    if "ranks" in checkpoint:
        return checkpoint["ranks"]
    return [{
        "plugins": checkpoint.get("plugins", {}),
        "rng_states": checkpoint.get("rng_states"),
        "epoch_start_rng": checkpoint["loops"].get("epoch_start_rng"),
    }]  # fmt: skip


def _this_rank(trainer: Trainer, ranks: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """What this rank saved; resuming on another number of processes, rank 0's where this rank saved nothing."""
    rank = trainer.global_rank
    if len(ranks) != trainer.world_size:
        first = ranks[0]["plugins"]
        differing = sorted(
            {k for entry in ranks[1:] for k in entry["plugins"] if not _same(entry["plugins"].get(k), first.get(k))}
        )
        if differing:
            warnings.warn(
                f"ckpt_path={path!r} was saved by {len(ranks)} processes and this run has {trainer.world_size}: the "
                f"per-rank plugin state {', '.join(map(repr, differing))} differed between the saved ranks; rank "
                f"{rank} restores that of saved rank {rank if rank < len(ranks) else 0}",
                UserWarning,
                stacklevel=3,
            )
    return ranks[rank] if rank < len(ranks) else ranks[0]


def _same(a: Any, b: Any) -> bool:
    """Equality of saved state, tensors included (``==`` on a tensor is elementwise)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# ==================================================================================================== spawned runs
def capture_run(trainer: Trainer, result: Any) -> dict[str, Any]:
    """What a process that did not run the stage itself (``ddp_spawn``, XLA's launcher) adopts from rank 0."""
    module = trainer.lightning_module
    return {
        "result": result,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()} if module is not None else None,
        "callback_metrics": {k: _cpu(v) for k, v in trainer.callback_metrics.items()},
        "logged_metrics": dict(trainer.logged_metrics),
        "current_epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "progress": asdict(trainer.progress),
        "callbacks": {c.state_key: c.state_dict() for c in trainer.callbacks},
    }


def adopt_run(trainer: Trainer, payload: dict[str, Any]) -> Any:
    """Make this process's trainer and module look as if it had run the stage; returns the stage's result."""
    from torchplug._loop import Progress

    module = trainer.lightning_module
    if module is not None and payload.get("state_dict") is not None:
        module.load_state_dict(payload["state_dict"])
        module.trainer = trainer
    trainer.callback_metrics = payload["callback_metrics"]
    trainer.logged_metrics = payload["logged_metrics"]
    trainer.current_epoch, trainer.global_step = payload["current_epoch"], payload["global_step"]
    trainer.progress = Progress(**payload["progress"])
    for callback in trainer.callbacks:
        state = payload["callbacks"].get(callback.state_key)
        if state:
            callback.load_state_dict(state)
    return payload["result"]


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


# ==================================================================================================== RNG
def get_rng_states(trainer: Trainer) -> dict[str, Any]:
    """This process's random generators: the host's (torch's CPU generator, Python's, NumPy's) and the plugins'
    (``torchplug_get_rng_states``: the CUDA generator of this rank's device)."""
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": (version, tuple(internal), gauss)}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = (str(kind), torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    for answer in trainer.hook.torchplug_get_rng_states(trainer=trainer):
        if answer:
            states.update(answer)
    return states


def set_rng_states(trainer: Trainer, states: dict[str, Any] | None) -> None:
    if not states:
        return
    trainer.hook.torchplug_set_rng_states(trainer=trainer, states=states)
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in states:
        try:
            import numpy as np
        except ImportError:
            return
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _safe_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters as data that ``weights_only`` loading accepts; other objects become their repr."""

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(convert(v) for v in value)
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        return repr(value)

    return {str(k): convert(v) for k, v in hparams.items()}
