"""Where a stage's data comes from, checking it, how many batches each loader gives, and iterating them.

Data is a loader, a list or dict of loaders (nested too), or a :class:`~torchplug.utilities.CombinedLoader`. Training
reads several loaders together (``max_size_cycle`` unless a CombinedLoader says otherwise); evaluation reads them one
after another, each with its ``dataloader_idx``.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from torchplug._combined_loader import CombinedLoader, flatten, length
from torchplug._errors import ArgumentTypeError, MisconfigurationError, PossibleUserWarning
from torchplug.utilities import rank_zero_warn, with_seeded_workers

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

_ARGUMENT = {"fit": "train_dataloaders"}
_EVAL_STAGE = {"val": "validate", "test": "test", "predict": "predict"}


def source(trainer: Trainer, kind: str, given: Any, fn: str) -> Any:
    """The data of ``kind`` (train, val, test, predict): given, else the datamodule's, else the module's
    ``<kind>_dataloader()``. ``None`` when nothing provides it; a TypeError naming its origin when it is not data."""
    argument = "val_dataloaders" if (fn, kind) == ("fit", "val") else _ARGUMENT.get(fn, "dataloaders")
    if given is not None:
        _check_iterable(given, f"An invalid dataloader was passed to `Trainer.{fn}({argument}=...)`")
        return given
    for owner in (trainer.datamodule, trainer.lightning_module):
        method = getattr(owner, f"{kind}_dataloader", None) if owner is not None else None
        if method is None or not _implemented(owner, f"{kind}_dataloader"):
            continue
        data = method()
        _check_iterable(data, f"An invalid dataloader was returned from `{type(owner).__name__}.{kind}_dataloader()`")
        return data
    return None


def missing(kind: str, fn: str) -> ArgumentTypeError:
    argument = _ARGUMENT.get(fn, "dataloaders")
    return ArgumentTypeError(
        f"An invalid dataloader was passed to `Trainer.{fn}({argument}=None)`: found None. Pass {argument}=, a "
        f"datamodule, or implement {kind}_dataloader() in the module or datamodule"
    )


def _implemented(owner: Any, name: str) -> bool:
    from torchplug._schedule import overrides
    from torchplug.module import DataModule, Module

    return overrides(owner, name, DataModule if isinstance(owner, DataModule) else Module)


def _check_iterable(data: Any, what: str) -> None:
    leaves = data.flattened if isinstance(data, CombinedLoader) else flatten(data)[0]
    for leaf in leaves:
        if isinstance(leaf, DataLoader):
            continue
        try:
            iter(leaf)
        except TypeError:
            raise ArgumentTypeError(
                f"{what}: found {leaf!r}, which is not iterable. Pass a torch DataLoader (or any iterable of "
                "batches), or a list or dict of them"
            ) from None


def combined(trainer: Trainer, data: Any, stage: str, mode: str, kind: str) -> CombinedLoader:
    """``data`` as a CombinedLoader whose loaders went through the strategy (distributed samplers), their workers
    seeded where ``seed_everything(workers=True)`` asked for it. ``kind`` (train, val, test, predict) names the
    loaders in warnings about them."""
    loader = data if isinstance(data, CombinedLoader) else CombinedLoader(data, mode)
    loader.flattened = [
        with_seeded_workers(trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=dl, stage=stage),
                            rank=trainer.global_rank)
        for dl in loader.flattened
    ]  # fmt: skip
    for leaf in loader.flattened:
        _warn_about(trainer, leaf, kind)
    return loader


def _warn_about(trainer: Trainer, loader: Any, kind: str) -> None:
    """Lightning's warnings about a loader that is likely (not surely) set up by mistake, in its words (on global
    rank 0 only, as Lightning's)."""
    if not isinstance(loader, DataLoader):
        return
    name = f"{kind}_dataloader"
    if kind != "train" and isinstance(loader.sampler, (RandomSampler, DistributedSampler)) and getattr(
        loader.sampler, "shuffle", True
    ):
        rank_zero_warn(
            f"Your `{name}`'s sampler has shuffling enabled, it is strongly recommended that you turn shuffling off "
            "for val/test dataloaders.",
            category=PossibleUserWarning,
            stacklevel=8,
        )
    context = loader.multiprocessing_context
    start_method = context.get_start_method() if context is not None else multiprocessing.get_start_method()
    if loader.num_workers > 0 and start_method == "spawn" and not loader.persistent_workers:
        rank_zero_warn(
            f"Consider setting `persistent_workers=True` in '{name}' to speed up the dataloader worker initialization.",
            category=UserWarning,
            stacklevel=8,
        )
    elif loader.num_workers < 2 and (suggested := suggested_max_num_workers(trainer.num_devices)) > 1:
        rank_zero_warn(
            f"The '{name}' does not have many workers which may be a bottleneck. Consider increasing the value of "
            f"the `num_workers` argument` to `num_workers={suggested}` in the `DataLoader` to improve performance.",
            category=PossibleUserWarning,
            stacklevel=8,
        )
    if loader.persistent_workers and loader.pin_memory and trainer.reload_dataloaders_every_n_epochs > 0:
        rank_zero_warn(
            "The combination of `DataLoader(`pin_memory=True`, `persistent_workers=True`) and `Trainer("
            "reload_dataloaders_every_n_epochs > 0)` can lead to instability due to limitations in PyTorch"
            " (https://github.com/pytorch/pytorch/issues/91252). We recommend setting `pin_memory=False` in this case.",
            category=PossibleUserWarning,
            stacklevel=8,
        )


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for a ``DataLoader``'s ``num_workers``: the CPUs this process may use, shared among the
    ``local_world_size`` processes of this machine, less one for the process itself (at least 1)."""
    if local_world_size < 1:
        raise ValueError(f"suggested_max_num_workers: local_world_size={local_world_size}; should be >= 1")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)


def without_shuffling(loader: CombinedLoader, kind: str) -> None:
    """``overfit_batches``: read the same first batches every epoch (Lightning's warning when it changes a loader)."""
    leaves = loader.flattened
    if all(isinstance(getattr(dl, "sampler", None), SequentialSampler) for dl in leaves if hasattr(dl, "sampler")):
        return
    warnings.warn(
        f"You requested to overfit but enabled {kind} dataloader shuffling. We are turning off the {kind} dataloader "
        "shuffling for you.",
        UserWarning,
        stacklevel=4,
    )
    loader.flattened = [_sequential(dl) if isinstance(dl, DataLoader) else dl for dl in leaves]


def _sequential(loader: DataLoader) -> DataLoader:
    if isinstance(loader.sampler, SequentialSampler) or loader.batch_sampler is None:
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )  # fmt: skip


class _IndexRecorder:
    """A batch sampler that remembers the dataset indices of each batch it yields (workers may run ahead: the
    indices are looked up by batch index)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler, self.seen = batch_sampler, []

    def __iter__(self) -> Iterator[Any]:
        self.seen = []
        for indices in self.batch_sampler:
            self.seen.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["batch_sampler"], name)


def recording_indices(loader: Any) -> tuple[Any, _IndexRecorder | None]:
    """``loader`` reading through an :class:`_IndexRecorder` (for prediction writers), and the recorder."""
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        return loader, None
    recorder = _IndexRecorder(loader.batch_sampler)
    clone = copy.copy(loader)
    object.__setattr__(clone, "batch_sampler", recorder)  # DataLoader guards the attribute after construction
    object.__setattr__(clone, "_iterator", None)
    return clone, recorder


def num_batches(loader: Any, limit: int | float, flag: str) -> int | float:
    """How many batches ``limit`` (an int count or a float fraction) selects; ``inf`` for a loader with no length."""
    count = length(loader)
    if count == 0:
        warnings.warn(
            f"the {_LOADER_NAMES.get(flag, 'a')} dataloader is empty (its length is 0): there is nothing to "
            f"{'train on' if flag == 'limit_train_batches' else 'run'}; make sure this was your intention",
            UserWarning,
            stacklevel=3,
        )
    if isinstance(limit, int):
        return min(count, limit)
    if count == math.inf:
        if limit not in (0.0, 1.0):
            raise MisconfigurationError(
                f"{flag}={limit!r}: the dataloader has no length (an `IterableDataset`, or no __len__), so a "
                f"fraction of it cannot be taken; `Trainer({flag})` must be `0.0`, `1.0` or an int"
            )
        return 0 if limit == 0.0 else math.inf
    selected = int(count * limit)
    if selected == 0 and limit > 0.0 and count > 0:
        raise MisconfigurationError(
            f"{flag}={limit!r} selects no batch of the {count} of the {_LOADER_NAMES.get(flag, '')} dataloader "
            f"({limit} * {count} < 1). Use at least {flag}={math.ceil(1e4 / count) / 1e4:g}, an int number of "
            "batches, or 0 to skip it on purpose"
        )
    return selected


_LOADER_NAMES = {
    "limit_train_batches": "training", "limit_val_batches": "validation", "limit_test_batches": "test",
    "limit_predict_batches": "predict",
}  # fmt: skip


def set_epoch(loaders: Iterable[Any], epoch: int) -> None:
    """Tell the loaders' samplers which epoch it is (``DistributedSampler`` reshuffles with it)."""
    for loader in loaders:
        batch_sampler = getattr(loader, "batch_sampler", None)
        samplers = {id(s): s for s in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None))}
        for sampler in samplers.values():
            method = getattr(sampler, "set_epoch", None)
            if callable(method):
                method(epoch)


def with_is_last(loader: Iterable[Any], count: int | float) -> Iterator[tuple[Any, bool]]:
    """``(batch, is_last)`` for the first ``count`` batches; without a length, read one ahead to know the last."""
    if count != math.inf:
        last = int(count) - 1
        for i, item in enumerate(itertools.islice(loader, int(count))):
            yield item, i == last
        return
    iterator = iter(loader)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def limited(loader: Iterable[Any], count: int | float) -> Iterator[Any]:
    return iter(loader) if count == math.inf else itertools.islice(loader, int(count))


def batches_of(loader: CombinedLoader) -> Iterable[Any]:
    """What the training step reads: a single loader itself, the combined batches of several."""
    leaves = loader.flattened
    if len(leaves) == 1 and not isinstance(loader.iterables, (list, tuple, dict)):
        return leaves[0]
    return (batch for batch, _, _ in loader)


class StepIterator:
    """What a step that takes ``dataloader_iter`` reads: ``(batch, batch_idx, dataloader_idx)`` per ``next``. The
    loop calls the step again while batches remain (it looks one ahead), so the step never sees an empty one;
    ``last`` is what was read last (what the batch hooks get, ``(None, 0, 0)`` before the first read)."""

    def __init__(self, items: Iterator[tuple[Any, int, int]], prepare: Callable[[Any, int], Any]) -> None:
        self._items, self._prepare = items, prepare
        self._ahead: list[tuple[Any, int, int]] = []
        self.last: tuple[Any, int, int] = (None, 0, 0)

    def has_next(self) -> bool:
        if not self._ahead:
            try:
                self._ahead.append(next(self._items))
            except StopIteration:
                return False
        return True

    def __iter__(self) -> StepIterator:
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if not self.has_next():
            raise StopIteration
        batch, batch_idx, dataloader_idx = self._ahead.pop()
        self.last = (self._prepare(batch, dataloader_idx), batch_idx, dataloader_idx)
        return self.last


def iterator_steps(batches: Iterable[Any], count: int | float, prepare: Callable[[Any, int], Any]) -> Iterator[Any]:
    """``(dataloader_iter, False)`` for each training step while batches remain (the step reads them itself)."""
    data = StepIterator(((b, i, 0) for i, b in enumerate(limited(batches, count))), prepare)
    while data.has_next():
        yield data, False


def takes_iterator(method: Callable[..., Any]) -> bool:
    """Whether a step takes the data iterator (``training_step(self, dataloader_iter)``), as Lightning detects it."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "dataloader_iter" in params


def step_arguments(method: Callable[..., Any], several_loaders: bool) -> Callable[[Any, int, int], tuple[Any, ...]]:
    """How to call a ``<stage>_step``: with ``batch_idx`` when it takes one, ``dataloader_idx`` with several loaders.

    Lightning's rule: ``batch_idx`` is passed when the method names it, takes ``*args``, or takes two arguments.
    """
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        params = []
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    wants_index = variadic or len(positional) >= 2 or any(p.name == "batch_idx" for p in params)
    if several_loaders:
        return lambda batch, batch_idx, dataloader_idx: (batch, batch_idx, dataloader_idx)
    if wants_index:
        return lambda batch, batch_idx, dataloader_idx: (batch, batch_idx)
    return lambda batch, batch_idx, dataloader_idx: (batch,)

