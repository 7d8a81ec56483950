"""Giving each process its own share of a DataLoader's data with a ``DistributedSampler``."""

from __future__ import annotations

import copy
import os
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler


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
        seed=int(os.environ.get("TORCHPLUG_GLOBAL_SEED", 0)),
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
