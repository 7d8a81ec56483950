"""Helpers that backends and users share: moving nested batches, sharding loaders, seeding, rank-zero calls."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import logging
import os
import pickle
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from torchplug._combined_loader import CombinedLoader
from torchplug._compile import from_compiled, to_uncompiled
from torchplug._devices import parse_devices
from torchplug._errors import PossibleUserWarning
from torchplug._grads import grad_norm
from torchplug._memory import recursive_detach
from torchplug._optim import LRSchedulerConfig
from torchplug._parameter_tying import find_shared_parameters, set_shared_parameters
from torchplug._rng import isolate_rng
from torchplug._states import GradClipAlgorithmType

_T = TypeVar("_T")


class AttributeDict(dict):  # type: ignore[type-arg]
    """A ``dict`` whose keys are also attributes: ``hparams.lr`` and ``hparams["lr"]`` are the same value."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        try:
            del self[key]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'") from None

    def __repr__(self) -> str:
        if not self:
            return ""
        keys = sorted(self, key=str)
        labels = ['"' + str(k) + '":' for k in keys]
        width = max(len(label) for label in labels)
        return "\n".join(f"{label:{width}s} {self[k]}" for label, k in zip(labels, keys))


def _launched_rank() -> int | None:
    """This process's global rank where a launcher set it in the environment (``RANK``, ``LOCAL_RANK``, ...), else
    None."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def rank_zero_only(fn: Callable[..., _T] | None = None, default: Any = None) -> Any:
    """Decorate ``fn`` to run only in the process of global rank 0; elsewhere a call returns ``default``.

    The rank is ``rank_zero_only.rank``: read from the environment (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``)
    at import, and set to the trainer's global rank when a run starts.
    """
    if fn is None:
        return functools.partial(rank_zero_only, default=default)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            return fn(*args, **kwargs)
        return default

    return wrapped


rank_zero_only.rank = _launched_rank() or 0  # type: ignore[attr-defined]
_log = logging.getLogger("torchplug")


@rank_zero_only
def rank_zero_warn(message: str | Warning, stacklevel: int = 4, **kwargs: Any) -> None:
    """``warnings.warn`` on global rank 0 only (``category=`` as for ``warnings.warn``)."""
    warnings.warn(message, stacklevel=stacklevel, **kwargs)


class LightningDeprecationWarning(DeprecationWarning):
    """The category of the deprecations torchplug carries over from Lightning's API (``to_torchscript``, ...),
    under Lightning's name, so that a ported ``warnings.filterwarnings`` or ``pytest.warns`` keeps matching."""


@rank_zero_only
def rank_zero_info(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    """An INFO line on the ``torchplug`` logger, on global rank 0 only."""
    _log.info(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_debug(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    """A DEBUG line on the ``torchplug`` logger, on global rank 0 only."""
    _log.debug(*args, stacklevel=stacklevel, **kwargs)


def disable_possible_user_warnings(module: str = "") -> None:
    """Silence :class:`PossibleUserWarning` (the warnings about what is often, not always, a mistake), from every
    module or from those whose name matches the regular expression ``module`` (``warnings.filterwarnings``'s)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


def is_picklable(obj: object) -> bool:
    """Whether ``pickle.dumps(obj)`` succeeds."""
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True


def apply_to_collection(data: Any, dtype: type | tuple[type, ...], function: Callable[..., Any]) -> Any:
    """Apply ``function`` to every element of type ``dtype`` in nested tuples, lists, dicts and dataclasses."""
    if isinstance(data, dtype):
        return function(data)
    if isinstance(data, Mapping):
        return type(data)({k: apply_to_collection(v, dtype, function) for k, v in data.items()})  # type: ignore[call-arg]
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_collection(d, dtype, function) for d in data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return type(data)([apply_to_collection(d, dtype, function) for d in data])  # type: ignore[call-arg]
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {
            f.name: apply_to_collection(getattr(data, f.name), dtype, function)
            for f in dataclasses.fields(data)
            if f.init
        }
        return dataclasses.replace(data, **changes)
    return data


def move_data_to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor in ``batch`` to ``device``.

    ``non_blocking`` copies to an accelerator without waiting (from pinned memory the copy overlaps with compute;
    from pageable memory the driver stages it first). A copy back to the host is non-blocking only from pinned
    memory, where the result cannot be read before it has arrived.
    """
    if not isinstance(device, torch.device):
        device = torch.device(device)
    to_host = device.type == "cpu"

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == device:
            return tensor
        return tensor.to(device, non_blocking=non_blocking and (not to_host or tensor.is_pinned()))

    if isinstance(batch, torch.Tensor):
        return move(batch)
    kind = type(batch)
    if kind is list or kind is tuple:  # the common (x, y) batch already in place, without the generic walk
        for item in batch:
            if type(item) is not torch.Tensor or item.device != device:
                break
        else:
            return batch
    return apply_to_collection(batch, torch.Tensor, move)


def batch_mover(device: torch.device | str, non_blocking: bool = False) -> Callable[[Any], Any]:
    """``move_data_to_device`` specialised for one device, for a per-batch path: a batch already there (the CPU's
    ``(x, y)`` from a DataLoader) is recognised with a few attribute reads and returned as it is."""
    device = torch.device(device)
    tensor_type = torch.Tensor
    if device.type == "cpu":

        def to_device(batch: Any) -> Any:
            kind = type(batch)
            if kind is list or kind is tuple:
                for item in batch:
                    if type(item) is not tensor_type or not item.is_cpu:
                        break
                else:
                    return batch  # every item a tensor on the CPU already
            return move_data_to_device(batch, device, non_blocking)

    else:

        def to_device(batch: Any) -> Any:
            kind = type(batch)
            if kind is list or kind is tuple:
                for item in batch:
                    if type(item) is not tensor_type or item.device != device:
                        break
                else:
                    return batch
            return move_data_to_device(batch, device, non_blocking)

    return to_device


def requires_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` must be given a closure (LBFGS), which loss-scaling precisions cannot support."""
    return _step_requires_closure(type(optimizer))


@functools.cache
def _step_requires_closure(cls: type) -> bool:
    try:
        closure = inspect.signature(cls.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def needs_distributed_sampler(loader: Any) -> bool:
    """True for a map-style DataLoader whose order is the default one (sequential or ``shuffle=True``).

    A user's own sampler or batch sampler is left alone: it already decides which samples each process sees.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return False
    if isinstance(loader.sampler, DistributedSampler):
        return False
    if not isinstance(loader.sampler, (SequentialSampler, RandomSampler)):
        return False
    batch_sampler = loader.batch_sampler
    return batch_sampler is None or type(batch_sampler) is BatchSampler


def distributed_loader(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """``loader`` with a ``DistributedSampler`` in place of its sampler; everything else is kept.

    It shuffles exactly when the user's loader did (its sampler is a ``RandomSampler``), seeded by
    ``seed_everything``'s seed, so every process draws the same permutation and takes its own slice of it.
    """
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=int(os.environ.get(SEED_VARIABLE, 0)),
        drop_last=False,
    )
    if type(loader) is DataLoader:
        kwargs: dict[str, Any] = dict(
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            prefetch_factor=loader.prefetch_factor,
            persistent_workers=loader.persistent_workers,
            pin_memory_device=loader.pin_memory_device,
        )
        if hasattr(loader, "in_order"):
            kwargs["in_order"] = loader.in_order
        return DataLoader(loader.dataset, **kwargs)
    # A DataLoader subclass may have its own __init__ signature: copy it and swap the samplers, which
    # DataLoader.__setattr__ guards after construction (hence object.__setattr__).
    clone = copy.copy(loader)
    object.__setattr__(clone, "sampler", sampler)
    if loader.batch_size is not None:
        object.__setattr__(clone, "batch_sampler", BatchSampler(sampler, loader.batch_size, loader.drop_last))
    object.__setattr__(clone, "_iterator", None)
    return clone


#: Where ``seed_everything`` leaves its seed and ``workers`` flag, for processes started later (spawned ranks, dataloader
#: workers) and for ``reset_seed``. Lightning's names: a script ported from Lightning reads the same variables.
SEED_VARIABLE = "PL_GLOBAL_SEED"
SEED_WORKERS_VARIABLE = "PL_SEED_WORKERS"
_SEED_RANGE = (0, 2**32 - 1)  # what numpy accepts


def seed_everything(seed: int | None = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed ``random``, ``torch`` and ``numpy`` (when installed) in this process, and say so in the environment.

    ``seed=None`` takes the seed from ``PL_GLOBAL_SEED`` (0 when unset). The seed is left in ``PL_GLOBAL_SEED`` and
    ``workers`` in ``PL_SEED_WORKERS``: spawned ranks inherit them, and with ``workers=True`` the Trainer gives each
    dataloader that has no ``worker_init_fn`` of its own :func:`worker_init_function`, so every worker of every rank
    draws from its own reproducible stream. Returns the seed.
    """
    if seed is None:
        value = os.environ.get(SEED_VARIABLE)
        if value is None:
            seed = 0
            if verbose:
                rank_zero_warn(f"No seed found, seed set to 0 (seed_everything got no seed and {SEED_VARIABLE} is not set)")
        else:
            try:
                seed = int(value)
            except ValueError:
                raise ValueError(
                    f"Invalid seed specified via {SEED_VARIABLE}: {value!r} (seed_everything: {SEED_VARIABLE}={value!r} "
                    f"is not an integer seed; set it to an integer in [{_SEED_RANGE[0]}, {_SEED_RANGE[1]}] or pass seed=)"
                ) from None
    elif not isinstance(seed, int):
        seed = int(seed)
    if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        raise ValueError(
            f"{seed} is not in bounds, numpy accepts from {_SEED_RANGE[0]} to {_SEED_RANGE[1]} (seed_everything: "
            f"seed={seed} is out of bounds)"
        )
    if verbose:
        rank = _launched_rank()
        _log.info(f"Seed set to {seed}" if rank is None else f"[rank: {rank}] Seed set to {seed}")
    os.environ[SEED_VARIABLE] = str(seed)
    os.environ[SEED_WORKERS_VARIABLE] = str(int(workers))
    _seed_generators(seed)
    return seed


def _seed_generators(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def reset_seed() -> None:
    """Seed again with what ``seed_everything`` last left in the environment; nothing when it was never called."""
    seed = os.environ.get(SEED_VARIABLE)
    if seed is None:
        return
    workers = os.environ.get(SEED_WORKERS_VARIABLE, "0")
    seed_everything(int(seed), workers=bool(int(workers)), verbose=False)


def worker_init_function(worker_id: int, rank: int | None = None) -> None:
    """A dataloader ``worker_init_fn`` that seeds ``random``, ``torch`` and ``numpy`` in each worker from the seed
    torch gave the worker, the worker's id and the process's global ``rank``. torch seeds each worker from the
    parent's generator, which ``seed_everything`` seeds alike on every rank: without the rank, worker ``i`` of every
    rank would draw the same augmentations. Streams are distinct across workers and ranks, and the same on every run
    with the same seed."""
    rank = rank if rank is not None else getattr(rank_zero_only, "rank", 0)
    base_seed = torch.initial_seed() - worker_id  # torch gives worker i the base seed + i
    # Mix the three numbers through a generator seeded with all of them, so that nearby inputs give unrelated seeds.
    mixer = torch.Generator().manual_seed((base_seed * 1_000_003 + worker_id) * 1_000_033 + rank & (2**63 - 1))
    torch_seed, stdlib_seed, numpy_seed = torch.randint(0, 2**63 - 1, (3,), generator=mixer).tolist()
    torch.manual_seed(torch_seed)
    random.seed(stdlib_seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(numpy_seed % 2**32)


def with_seeded_workers(loader: Any, rank: int) -> Any:
    """``loader`` with :func:`worker_init_function` as its ``worker_init_fn`` where ``seed_everything(workers=True)``
    asked for it: a ``DataLoader`` with workers and no ``worker_init_fn`` of its own; any other loader as it is."""
    if os.environ.get(SEED_WORKERS_VARIABLE) != "1" or not isinstance(loader, DataLoader):
        return loader
    if loader.num_workers == 0 or loader.worker_init_fn is not None:
        return loader
    clone = copy.copy(loader)
    clone.worker_init_fn = functools.partial(worker_init_function, rank=rank)
    object.__setattr__(clone, "_iterator", None)
    return clone


__all__ = [
    "LightningDeprecationWarning",
    "AttributeDict",
    "PossibleUserWarning",
    "CombinedLoader",
    "GradClipAlgorithmType",
    "LRSchedulerConfig",
    "apply_to_collection",
    "batch_mover",
    "disable_possible_user_warnings",
    "distributed_loader",
    "find_shared_parameters",
    "grad_norm",
    "isolate_rng",
    "from_compiled",
    "is_picklable",
    "move_data_to_device",
    "needs_distributed_sampler",
    "parse_devices",
    "rank_zero_debug",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "recursive_detach",
    "requires_closure",
    "reset_seed",
    "seed_everything",
    "set_shared_parameters",
    "to_uncompiled",
    "with_seeded_workers",
    "worker_init_function",
]
