"""Giving each XLA replica its own share of a dataloader's samples."""

from __future__ import annotations

from typing import Any

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from torchplug import MisconfigurationError
from torchplug.utilities import distributed_loader, needs_distributed_sampler


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
    if not needs_distributed_sampler(loader):  # the user's own sampler decides what each replica sees
        return loader
    return distributed_loader(loader, num_replicas, rank)
