"""A run's state: what a checkpoint holds, how it is made and restored, and the hand-back of spawned runs.

The core only orchestrates (layout in docs/checkpoints.md): the strategy produces and restores the module's and
optimizers' state and decides who writes what where; every plugin produces its own state on every rank, and the
checkpoint keeps each rank's.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import random
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchplug import _hparams, _profiling
from torchplug._checkpoint import check_weights_only_safe, read_header
from torchplug._errors import CheckpointNotFoundError, MisconfigurationError

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
def dump_checkpoint(trainer: Trainer, weights_only: bool, dry_run: bool = False) -> dict[str, Any]:
    """This rank's view of the run, as a checkpoint dictionary (the strategy decides how it is written).

    ``dry_run``: for :func:`check_saveable`, without the strategy's module and optimizer state (tensors it makes
    itself, possibly with collectives), each ``on_save_checkpoint`` checked for what it adds.
    """
    from torchplug import __version__

    module = trainer.lightning_module
    if module is None:
        raise AttributeError(
            "Saving a checkpoint is only possible if a model is attached to the Trainer: call save_checkpoint() "
            "during or after fit(), validate(), test() or predict()"
        )
    hook = trainer.hook
    checkpoint: dict[str, Any] = {
        "torchplug_checkpoint": CHECKPOINT_FORMAT,
        "torchplug_version": __version__,
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "state_dict": {} if dry_run else hook.torchplug_model_state_dict(trainer=trainer, module=module),
        **(_hparams.checkpoint_entries(module) or {module.CHECKPOINT_HYPER_PARAMS_KEY: {}}),
        "backends": {"accelerator": trainer.accelerator_name, "strategy": trainer.strategy_name,
                     "precision": trainer.precision_name},  # fmt: skip
    }
    if not weights_only:
        progress = trainer.progress
        mid_epoch = progress.phase == "train" and progress.batches_done > 0
        checkpoint["loops"] = {k: v for k, v in asdict(progress).items() if k != "epoch_start_rng"}
        checkpoint["callback_metrics"] = {k: v.detach().cpu() for k, v in trainer.callback_metrics.items()}
        checkpoint["optimizer_states"] = [] if dry_run else [
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
        if trainer.datamodule is not None:  # the check before saving is no call for the profile to count
            checkpoint["datamodule"] = (trainer.datamodule.state_dict() if dry_run
                                        else _profiling.call_datamodule(trainer, "state_dict"))  # fmt: skip
    if trainer.datamodule is not None:
        checkpoint.update(_hparams.checkpoint_entries(trainer.datamodule))
    if dry_run:
        _check_saveable(checkpoint, "")
    with _in_hook(trainer, "on_save_checkpoint"):  # where self.log is refused
        for callback in trainer.callbacks:  # Lightning's order: callbacks, then the module
            _run_save_hook(callback, (trainer, module, checkpoint), dry_run)
        _run_save_hook(module, (checkpoint,), dry_run)
    return checkpoint


def _run_save_hook(owner: Any, args: tuple[Any, ...], dry_run: bool) -> None:
    """``owner.on_save_checkpoint(*args)``: a method, or any callable set on the instance (``LambdaCallback``)."""
    hook = owner.on_save_checkpoint
    if not dry_run:
        hook(*args)
        return
    try:
        hook(*args)
    except Exception:
        return  # a hook that cannot run before training runs for real at the first save, and raises there
    _check_saveable(args[-1], f" (put there by {type(owner).__name__}.on_save_checkpoint)")


def check_saveable(trainer: Trainer) -> None:
    """Collect this rank's checkpoint state once, at fit start, without writing anything: state that a checkpoint
    cannot hold is an error now rather than at the first save, hours in."""
    dump_checkpoint(trainer, weights_only=False, dry_run=True)


def _check_saveable(checkpoint: dict[str, Any], origin: str) -> None:
    try:
        check_weights_only_safe(checkpoint, "checkpoint")
    except TypeError as err:
        raise TypeError(
            f"fit(): this run's checkpoints could not be saved: {err} Found at fit start by collecting the state "
            f"once, before training, without writing anything{origin}."
        ) from None


@contextlib.contextmanager
def _in_hook(trainer: Trainer, name: str) -> Iterator[None]:
    """Mark hook ``name`` as running (what ``self.log`` checks) when a stage is running."""
    loop = trainer._loop
    if loop is None:
        yield
        return
    previous, loop.current_hook = loop.current_hook, name
    try:
        yield
    finally:
        loop.current_hook = previous


def save_checkpoint(trainer: Trainer, path: str, weights_only: bool) -> None:
    checkpoint = dump_checkpoint(trainer, weights_only)
    trainer.hook.torchplug_save_checkpoint(trainer=trainer, checkpoint=checkpoint, path=path)
    trainer.barrier("save_checkpoint")


# ==================================================================================================== which file
def resolve_ckpt_path(trainer: Trainer, ckpt_path: Any) -> str | None:
    """The checkpoint ``ckpt_path`` names for this run; ``None`` for ``"last"`` when there is none yet anywhere.

    ``"last"``: this run's last checkpoint, from its ``ModelCheckpoint``s' folders (without one, from the logger
    version's folder). ``"best"``: the first ``ModelCheckpoint``'s best. Another run's checkpoint is never taken
    silently: when this run's folders have none but other runs' have, or when several qualify, the error lists them.
    """
    stage = trainer.stage or "fit"
    if isinstance(ckpt_path, str) and ckpt_path in ("last", "best"):
        find = _last_checkpoint if ckpt_path == "last" else _best_checkpoint
        if trainer.world_size == 1:
            return find(trainer, stage)
        # Rank 0 looks (other nodes may see the folders late, or not at all) and every rank takes its answer.
        answer: tuple[str | None, MisconfigurationError | None] = (None, None)
        if trainer.is_global_zero:
            try:
                answer = (find(trainer, stage), None)
            except MisconfigurationError as err:
                answer = (None, err)
        path, error = trainer.broadcast(answer)
        if error is not None:
            raise error
        return path
    if isinstance(ckpt_path, bool) or not isinstance(ckpt_path, (str, os.PathLike)):
        raise MisconfigurationError(
            f"{stage}(ckpt_path={ckpt_path!r}): expected the path of a checkpoint, 'last' or 'best'"
        )
    path = os.fspath(ckpt_path)
    if not os.path.exists(path):
        close = difflib.get_close_matches(path, ["last", "best"], n=1, cutoff=0.6)
        hint = f"; did you mean ckpt_path={close[0]!r}?" if close else ""
        raise CheckpointNotFoundError(f"Checkpoint file not found: {stage}(ckpt_path={path!r}) does not exist{hint}")
    return path


def _last_checkpoint(trainer: Trainer, stage: str) -> str | None:
    from torchplug.callbacks import _checkpoint_folder as folder

    callbacks = trainer.checkpoint_callbacks
    written = [cb.last_model_path for cb in callbacks if cb.last_model_path and os.path.lexists(cb.last_model_path)]
    if written:  # written by this trainer's own fit, in this process
        return max(written, key=_mtime)
    if callbacks:
        folders = [cb.dirpath for cb in callbacks if cb.dirpath]
        found = sorted({path for cb in callbacks if cb.dirpath for path in folder.last_files(cb, cb.dirpath)})
    else:
        log_dir = trainer.log_dir
        folders = [log_dir, os.path.join(log_dir, "checkpoints")]
        found = sorted({path for f in folders for path in _last_named(f)})
    if len(found) == 1:
        return found[0]
    if found:
        claimed = _claimed_by_callbacks(callbacks, found)
        if claimed is not None:
            return max(claimed, key=_mtime)
        raise MisconfigurationError(
            f"{stage}(ckpt_path='last') is ambiguous: this run's checkpoint folders hold {len(found)} last "
            f"checkpoints: {_listing(found)}. Pass the one to use as ckpt_path=<path>"
        )
    elsewhere = sorted(set(_other_runs_last(trainer)) - set(found))
    where = ", ".join(map(repr, dict.fromkeys(folders))) or "none"
    if elsewhere:
        raise MisconfigurationError(
            f"{stage}(ckpt_path='last'): this run's checkpoint folders ({where}) hold no last checkpoint, and "
            f"'last' never means another run's. Other runs have: {_listing(elsewhere)}. To continue one of them, "
            "pass its path as ckpt_path=<path> (and, to keep logging into its folder, its version: "
            "CSVLogger(save_dir, version=N))"
        )
    warnings.warn(
        f"{stage}(ckpt_path='last'): there is no last checkpoint yet (looked in {where}). No checkpoint will be "
        "loaded: the run starts from the module as it is. ModelCheckpoint(save_last=True) writes one.",
        UserWarning,
        stacklevel=3,
    )
    return None


def _best_checkpoint(trainer: Trainer, stage: str) -> str:
    callback = trainer.checkpoint_callback
    if callback is None:
        raise MisconfigurationError(
            f"{stage}(ckpt_path='best'): `ModelCheckpoint` is not configured (enable_checkpointing=False, or no "
            "ModelCheckpoint in callbacks), so no checkpoint is the best one; pass a path as ckpt_path="
        )
    if len(trainer.checkpoint_callbacks) > 1:
        warnings.warn(
            f"{stage}(ckpt_path='best'): {len(trainer.checkpoint_callbacks)} ModelCheckpoint callbacks; the best "
            "checkpoint of the first one is used",
            UserWarning,
            stacklevel=3,
        )
    path = callback.best_model_path or _best_in_folder(callback)
    if not path:
        if trainer.fast_dev_run:
            raise MisconfigurationError(
                f"{stage}(ckpt_path='best') with fast_dev_run: fast_dev_run saves no checkpoint; pass a path"
            )
        kept = "it keeps none (save_top_k=0)" if callback.save_top_k == 0 else "it has saved none yet"
        raise MisconfigurationError(
            f"{stage}(ckpt_path='best'): ModelCheckpoint(dirpath={callback.dirpath!r}) is not configured to save "
            f"the best checkpoint or has not saved one: {kept}. Pass a path as ckpt_path="
        )
    if not os.path.lexists(path):
        raise CheckpointNotFoundError(
            f"Checkpoint file not found: {stage}(ckpt_path='best') is {path!r}, which no longer exists"
        )
    return path


def _best_in_folder(callback: Any) -> str | None:
    """In a new process: the best path the callback recorded in its own folder, from its newest checkpoint."""
    from torchplug.callbacks import _checkpoint_folder as folder

    if not callback.dirpath:
        return None
    newest: tuple[int, str] | None = None
    for path in folder.own_names(callback, callback.dirpath):
        header = read_header(path)
        state = ((header or {}).get("callbacks") or {}).get(callback.state_key) or {}
        best = state.get("best_model_path")
        if best and state.get("dirpath") == callback.dirpath and os.path.lexists(best):
            step = int(header.get("global_step", -1))  # type: ignore[union-attr]
            if newest is None or step > newest[0]:
                newest = (step, best)
    return newest[1] if newest else None


def _claimed_by_callbacks(callbacks: list[Any], found: list[str]) -> list[str] | None:
    """``found`` when each file is the last checkpoint of a different one of ``callbacks`` (by their saved state)."""
    owners = []
    for path in found:
        states = ((read_header(path) or {}).get("callbacks")) or {}
        real = os.path.realpath(path)
        claims = []
        for cb in callbacks:
            recorded = (states.get(cb.state_key) or {}).get("last_model_path")
            if recorded and os.path.realpath(recorded) == real:
                claims.append(cb.state_key)
        if len(claims) != 1:
            return None
        owners.append(claims[0])
    return found if len(set(owners)) == len(owners) else None


def _last_named(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if re.fullmatch(r"last(-v\d+)?\.ckpt", n)]


def _other_runs_last(trainer: Trainer) -> list[str]:
    """Last checkpoints in the standard places of other runs: logger versions, ``<default_root_dir>/checkpoints``."""
    from torchplug.loggers._base import FolderLogger

    roots = [os.path.join(trainer.default_root_dir, "lightning_logs")]
    roots += [logger.root_dir for logger in trainer.loggers if isinstance(logger, FolderLogger)]
    folders = [os.path.join(trainer.default_root_dir, "checkpoints")]
    for root in dict.fromkeys(roots):
        try:
            versions = sorted(os.listdir(root))
        except OSError:
            continue
        folders += [os.path.join(root, v, "checkpoints") for v in versions] + [os.path.join(root, v) for v in versions]
    return [path for f in dict.fromkeys(folders) for path in _last_named(f)]


def _listing(paths: list[str]) -> str:
    def describe(path: str) -> str:
        header = read_header(path)
        step = f"global step {header['global_step']}, " if header and "global_step" in header else ""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_mtime(path)))
        return f"{path!r} ({step}written {when})"

    return "; ".join(describe(p) for p in sorted(paths, key=_mtime))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


# ==================================================================================================== restoring
def restore(loop: Loop, path: str) -> None:
    """Load ``path`` into the set-up run: weights always; for ``fit`` everything needed to continue exactly."""
    trainer, module, hook = loop.trainer, loop.module, loop.trainer.hook
    checkpoint = hook.torchplug_load_checkpoint(trainer=trainer, path=path)
    trainer.ckpt_path = path
    if checkpoint.get("state_dict") is None:
        raise MisconfigurationError(f"ckpt_path={path!r} holds no 'state_dict'; it is not a torchplug checkpoint")
    with _in_hook(trainer, "on_load_checkpoint"):
        module.on_load_checkpoint(checkpoint)  # Lightning's order: the module, then callbacks
        for callback in trainer.callbacks:
            callback.on_load_checkpoint(trainer, module, checkpoint)
    state = checkpoint.get("state_dict")  # what the hooks left: they may rename or convert keys, as in Lightning
    if not isinstance(state, Mapping):
        raise MisconfigurationError(
            f"ckpt_path={path!r}: after on_load_checkpoint, checkpoint['state_dict'] is {type(state).__name__}, not "
            "a mapping of parameter names to tensors"
        )
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if (missing or unexpected) and getattr(module, "strict_loading", True):
        raise MisconfigurationError(
            f"ckpt_path={path!r} does not fit {type(module).__name__}: missing keys {missing}, unexpected keys "
            f"{unexpected} (set `model.strict_loading = False` to load what matches)"
        )
    try:
        hook.torchplug_load_model_state_dict(trainer=trainer, module=module, state_dict=state)
    except RuntimeError as err:
        raise MisconfigurationError(f"ckpt_path={path!r} does not fit {type(module).__name__}: {err}") from None
    if loop.stage != "fit":
        return
    if "loops" not in checkpoint:
        raise MisconfigurationError(
            f"ckpt_path={path!r} was saved with weights_only=True and cannot resume training; load its weights with "
            f"model.load_state_dict(torchplug.load_checkpoint({path!r})['state_dict']) and call fit() without "
            "ckpt_path"
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
    missing_callbacks = [key for key, value in callback_states.items() if value]
    dropped = [f"callback {key!r}" for key in missing_callbacks]
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
            f"ckpt_path={path!r}: nothing in this run restores {', '.join(dropped)}; that state is dropped"
            + (f". Please add the following callbacks: {missing_callbacks} to restore it" if missing_callbacks else ""),
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
