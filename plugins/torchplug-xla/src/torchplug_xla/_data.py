"""Giving each XLA replica its own share of a dataloader's samples."""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler

from torchplug import MisconfigurationError


def with_distributed_sampler(loader: Any, num_replicas: int, rank: int) -> Any:
    """``loader`` rebuilt around a ``DistributedSampler`` for replica ``rank`` of ``num_replicas``.

    Shuffling follows the original loader (a ``RandomSampler`` shuffles, seeded by ``seed_everything`` so every
    replica draws the same permutation). Every replica gets the same number of batches, padding by repeating
    samples, because a replica that ran out early would leave the others waiting in a collective. Loaders that are
    not ``DataLoader``s, iterable datasets and loaders that already shard are returned unchanged.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        raise MisconfigurationError(
            f"a dataloader with batch_sampler={type(batch_sampler).__name__}(...) cannot be split across "
            f"{num_replicas} XLA replicas automatically: shard it yourself (give each replica its rank's samples, "
            "see self.global_rank) and pass use_distributed_sampler=False"
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=int(os.environ.get("TORCHPLUG_GLOBAL_SEED", 0)),
    )
    options: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, sampler=sampler, **options)
