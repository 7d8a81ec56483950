"""Sharded checkpoints: one directory, each rank writing its own shards, loaded without running pickled code.

Layout of ``<name>.ckpt/`` (see docs/fsdp.md)::

    meta.ckpt        the checkpoint dictionary (format 2) except the tensors of "state_dict" and
                     "optimizer_states", each replaced by {"torchplug_fsdp.tensor": "<key>"}; every rank's "ranks"
                     entry. Written by global rank 0 with torchplug.atomic_save, read with weights_only=True.
    .metadata        torch.distributed.checkpoint's index of those tensors (a pickle: read with an unpickler
                     that builds only DCP's metadata classes)
    __<r>_0.distcp   the tensors written by rank r: its shards, and one copy of each unsharded tensor

DCP stores anything that is not a tensor with plain pickle and reads it back with ``weights_only=False``, so
nothing but tensors is ever given to it. The directory is written under a hidden temporary name next to the
destination and renamed into place by rank 0 once every rank has written (swapped atomically with an existing
checkpoint of the same name), so the destination holds a complete checkpoint or none.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import pickle
import shutil
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, atomic_save, load_checkpoint, temporary_path

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from torchplug import Trainer

#: The file holding everything but the sharded tensors.
META_NAME = "meta.ckpt"
#: What stands for a tensor in ``meta.ckpt``: ``{TENSOR_REF: "<the tensor's key in DCP>"}``.
TENSOR_REF = "torchplug_fsdp.tensor"
#: Top-level key of ``meta.ckpt`` describing the sharded part.
LAYOUT_KEY = "torchplug_fsdp"
LAYOUT_FORMAT = 1

_SHARDED_SECTIONS = ("state_dict", "optimizer_states")


# ==================================================================================================== tensors out, tensors in
def split_tensors(obj: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` with every tensor replaced by a reference; the tensors go into ``tensors`` under their path."""
    if isinstance(obj, torch.Tensor):
        key = "/".join(path)
        if key in tensors:
            raise ValueError(f"two tensors of the checkpoint have the key {key!r}")
        tensors[key] = obj
        return {TENSOR_REF: key}
    if isinstance(obj, dict):
        items = [(k, split_tensors(v, (*path, str(k)), tensors)) for k, v in obj.items()]
        return type(obj)(items) if type(obj) in (dict, OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        return type(obj)(split_tensors(v, (*path, str(i)), tensors) for i, v in enumerate(obj))
    return obj


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and TENSOR_REF in value


def fill_tensors(obj: Any, lookup: Callable[[str], Any]) -> Any:
    """``obj`` with each reference replaced by ``lookup(key)`` (references it returns ``None`` for stay)."""
    if is_ref(obj):
        found = lookup(obj[TENSOR_REF])
        return obj if found is None else found
    if isinstance(obj, dict):
        return type(obj)((k, fill_tensors(v, lookup)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(fill_tensors(v, lookup) for v in obj)
    return obj


# ==================================================================================================== DCP, safely
_DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    *(("pathlib", n) for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
    *(("pathlib._local", n) for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, torch dtypes and sizes, and nothing else: no callable from the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's tensor index")


def read_dcp_metadata(directory: Path) -> Any:
    """DCP's ``.metadata`` of ``directory``, unpickled with the allow-list and checked to describe tensors only."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    path = directory / ".metadata"
    try:
        with open(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except FileNotFoundError:
        raise MisconfigurationError(
            f"{str(directory)!r} is not a complete sharded checkpoint: it has no .metadata (the tensor index)"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever the unpickler met, the answer for the user is the same
        raise MisconfigurationError(
            f"{str(path)!r} was refused: a sharded checkpoint's tensor index may hold only "
            f"torch.distributed.checkpoint's metadata classes, and reading it stopped at: {err}. A checkpoint is "
            "data, not code; this one was not written by torchplug-fsdp, or was altered"
        ) from None
    if not isinstance(metadata, Metadata):
        raise MisconfigurationError(f"{str(path)!r} is not a torch.distributed.checkpoint index")
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise MisconfigurationError(
                f"{str(path)!r}: entry {key!r} is a {type(entry).__name__}; torchplug-fsdp checkpoints hold only "
                "tensors through torch.distributed.checkpoint (everything else is in meta.ckpt)"
            )
    for info in (metadata.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if not isinstance(info, _StorageInfo) or not isinstance(name, str) or os.path.basename(name) != name \
                or name in ("", ".", ".."):  # fmt: skip
            raise MisconfigurationError(f"{str(path)!r} points outside its checkpoint directory ({name!r})")
    return metadata


def _safe_reader(directory: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata = read_dcp_metadata(directory)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(directory)


def _safe_planner() -> Any:
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:  # DCP would torch.load(weights_only=False)
            raise MisconfigurationError(
                f"checkpoint entry {read_item.dest_index.fqn!r} is pickled data; torchplug-fsdp loads only tensors "
                "through torch.distributed.checkpoint"
            )

    return TensorsOnlyLoadPlanner()


def dcp_load(targets: dict[str, torch.Tensor], directory: Path, no_dist: bool = False) -> None:
    """Load ``targets`` in place (DTensors get their own shards, resharded from whatever was saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            dcp.load(targets, storage_reader=_safe_reader(directory), planner=_safe_planner(), no_dist=no_dist)
    except MisconfigurationError:
        raise
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        raise MisconfigurationError(
            f"could not load the sharded checkpoint {str(directory)!r}: {_root_message(err)}"
        ) from None


def _root_message(err: BaseException) -> str:
    """DCP wraps every rank's failure in one CheckpointException: the first underlying error, readably."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, failure = next(iter(sorted(failures.items())))
        inner = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(inner, MisconfigurationError):
            return str(inner)
        return f"rank {rank}: {type(inner).__name__}: {inner}"
    return f"{type(err).__name__}: {err}"


# ==================================================================================================== writing a directory
def save_sharded(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> None:
    """Every rank: its shards into a temporary directory; rank 0: ``meta.ckpt``, then the rename into place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    destination = Path(path)
    skeleton = dict(checkpoint)
    if "ranks" in checkpoint:  # every rank's own state (plugins, generators), like the one-file default
        skeleton["ranks"] = trainer.hook.torchplug_gather_objects(trainer=trainer, obj=checkpoint["ranks"][0])
    tensors: dict[str, torch.Tensor] = {}
    for section in _SHARDED_SECTIONS:
        if section in checkpoint:
            skeleton[section] = split_tensors(checkpoint[section], (section,), tensors)
    skeleton[LAYOUT_KEY] = {"format": LAYOUT_FORMAT, "world_size": trainer.world_size, "tensors": len(tensors)}

    temporary = None
    if trainer.is_global_zero:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(destination)
        temporary.mkdir()
    temporary = Path(trainer.broadcast(str(temporary) if temporary is not None else None, src=0))
    try:
        dcp.save(tensors, storage_writer=FileSystemWriter(temporary, single_file_per_rank=True, sync_files=True))
        if trainer.is_global_zero:
            atomic_save(skeleton, temporary / META_NAME)
            fsync_directory(temporary)
            publish(temporary, destination)
    except BaseException:
        if trainer.is_global_zero:
            remove_path(temporary)
        raise


def publish(temporary: Path, destination: Path) -> None:
    """Move the finished directory to ``destination``: a rename, or an atomic swap with what is there."""
    if not os.path.lexists(destination):
        os.rename(temporary, destination)
    elif _exchange(temporary, destination):
        remove_path(temporary)  # now the previous checkpoint
    else:  # no atomic swap here: the old one steps aside first (for an instant there is none at the destination)
        aside = temporary.with_name(temporary.name + ".old")
        os.rename(destination, aside)
        os.rename(temporary, destination)
        remove_path(aside)
    fsync_directory(destination.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that does not exist."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the kernel or the filesystem cannot
        return False
    raise OSError(error, os.strerror(error), str(b))


def remove_path(path: Path | None) -> None:
    if path is None or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def fsync_directory(directory: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ==================================================================================================== reading a directory
def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    return os.path.isdir(path)


def read_meta(directory: Path) -> dict[str, Any]:
    meta_path = directory / META_NAME
    if not meta_path.exists():
        raise MisconfigurationError(
            f"{str(directory)!r} is a directory without {META_NAME}: not a torchplug-fsdp sharded checkpoint"
        )
    meta = load_checkpoint(meta_path)  # torch.load(weights_only=True): no code runs
    if LAYOUT_KEY not in meta:
        raise MisconfigurationError(f"{str(meta_path)!r} does not describe a torchplug-fsdp sharded checkpoint")
    return meta


def load_sharded(trainer: Trainer, path: str, module: nn.Module, optimizers: list[Optimizer]) -> dict[str, Any]:
    """The checkpoint at ``path``, its tensors loaded into (copies of) the current module's and optimizers'
    layout: DTensors sharded as this run shards them, whatever the saving run's world size."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    directory = Path(path)
    meta = read_meta(directory)
    targets: dict[str, torch.Tensor] = {}
    current = get_model_state_dict(module)
    saved_model = meta.get("state_dict") or {}
    for fqn, ref in saved_model.items():
        if is_ref(ref) and fqn in current:
            targets[ref[TENSOR_REF]] = current[fqn]
    saved_optimizers = meta.get("optimizer_states") or []
    for index, (optimizer, saved) in enumerate(zip(optimizers, saved_optimizers)):
        if saved.get("state"):
            # torch's function, which gives a fresh optimizer its state (a zero-learning-rate step) to load into
            current_state = get_optimizer_state_dict(module, optimizer)
            _collect_targets(saved, current_state, (), targets, f"optimizer {index} ({type(optimizer).__name__})")
    dcp_load(targets, directory)
    return fill_tensors(meta, targets.get)


def _collect_targets(saved: Any, current: Any, path: tuple[str, ...], targets: dict[str, torch.Tensor],
                     what: str) -> None:  # fmt: skip
    if is_ref(saved):
        if not isinstance(current, torch.Tensor):
            raise MisconfigurationError(
                f"the checkpoint holds {what} state {'/'.join(path)!r}, which this run's optimizer does not have: "
                "resume with the optimizer the checkpoint was made with"
            )
        targets[saved[TENSOR_REF]] = current
    elif isinstance(saved, dict):
        current = current if isinstance(current, dict) else {}
        for key, value in saved.items():
            _collect_targets(value, current.get(key), (*path, str(key)), targets, what)
    elif isinstance(saved, (list, tuple)):
        current = current if isinstance(current, (list, tuple)) else ()
        for i, value in enumerate(saved):
            _collect_targets(value, current[i] if i < len(current) else None, (*path, str(i)), targets, what)


# ==================================================================================================== optimizer state
def optimizer_state_dict(module: nn.Module, optimizer: Optimizer, full: bool = False) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name (torch's distributed state dict), sharded or full.

    An optimizer that has not stepped yet is described without asking torch, whose state dict functions would
    initialise its state with a zero-learning-rate step (Adam's ``step`` would then start at 1).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:
        names = parameter_names(module)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]  # fmt: skip
        return {"state": {}, "param_groups": groups}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if full else None
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_optimizer_state_dict(module: nn.Module, optimizer: Optimizer, state: dict[str, Any]) -> None:
    """Restore ``optimizer`` from a state keyed by parameter name or by index (torch's ``optimizer.state_dict()``,
    as single-process and ddp checkpoints hold it), sharded (DTensors) or full (every rank holds all of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    if is_index_keyed(state):
        state = to_name_keyed(state, [parameter_names(module)[id(p)] for g in optimizer.param_groups
                                      for p in g["params"]])  # fmt: skip
    if not state.get("state"):  # saved before its first step: hyperparameters only, the state stays empty
        for group, saved in zip(optimizer.param_groups, state.get("param_groups", [])):
            group.update({k: v for k, v in saved.items() if k != "params"})
        return
    full = not any(isinstance(v, DTensor) for entry in state["state"].values() for v in entry.values())
    set_optimizer_state_dict(module, optimizer, _copy(state), options=StateDictOptions(full_state_dict=full))


def parameter_names(module: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` as the state dict names it (wrapper prefixes such as activation checkpointing's
    ``_checkpoint_wrapped_module`` or ``torch.compile``'s ``_orig_mod`` removed)."""
    skip = {"_checkpoint_wrapped_module", "_fsdp_wrapped_module", "_orig_mod"}
    names: dict[int, str] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), ".".join(part for part in name.split(".") if part not in skip))
    return names


def is_index_keyed(state: dict[str, Any]) -> bool:
    groups = state.get("param_groups") or []
    return any(isinstance(p, int) for g in groups for p in g.get("params", []))


def to_index_keyed(state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state as torch's ``optimizer.state_dict()`` has it (parameters numbered in group
    order), so that ``optimizer.load_state_dict`` of a single-process run takes it."""
    order = list(chain.from_iterable(g["params"] for g in state["param_groups"]))
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def to_name_keyed(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
        raise MisconfigurationError(
            f"the checkpoint's optimizer state covers {sum(len(g['params']) for g in state['param_groups'])} "
            f"parameters, and this run's optimizer {len(names)}"
        )
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _copy(obj: Any) -> Any:
    """Containers copied, tensors shared: torch's set_*_state_dict functions change the dicts they are given."""
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


# ==================================================================================================== one file from a directory
def consolidate_checkpoint(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the sharded checkpoint directory ``source`` as one ordinary torchplug checkpoint file.

    One process, no process group, any number of saving ranks. The file holds the full ``state_dict`` (loads
    into a plain ``nn.Module`` with ``load_state_dict``), the optimizer states as ``optimizer.state_dict()``
    has them, and everything else of the checkpoint (every rank's entry included): ``fit(ckpt_path=file)``
    resumes from it with any strategy. Written atomically; returns the checkpoint dictionary.
    """
    directory = Path(source)
    if not directory.is_dir():
        raise MisconfigurationError(f"{str(directory)!r} is not a sharded checkpoint directory")
    meta = read_meta(directory)
    metadata = read_dcp_metadata(directory)
    targets = {
        key: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
    }
    dcp_load(targets, directory, no_dist=True)
    checkpoint = fill_tensors(meta, targets.get)
    checkpoint.pop(LAYOUT_KEY, None)
    if "optimizer_states" in checkpoint:
        checkpoint["optimizer_states"] = [
            to_index_keyed(state) if not is_index_keyed(state) else state for state in checkpoint["optimizer_states"]
        ]
    atomic_save(checkpoint, destination)
    return checkpoint


__all__ = ["consolidate_checkpoint"]
