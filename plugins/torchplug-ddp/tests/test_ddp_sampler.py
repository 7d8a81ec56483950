"""The DistributedSampler swap, on real DataLoaders (no process group is needed to build one)."""

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from torchplug.utilities import distributed_loader, needs_distributed_sampler

DATA = TensorDataset(torch.arange(20).float().unsqueeze(1))


def indices(loader):
    return [int(v) for (batch,) in loader for v in batch.flatten()]


def test_each_rank_gets_its_own_slice_in_order_when_the_user_did_not_shuffle():
    loader = DataLoader(DATA, batch_size=3)
    shards = [indices(distributed_loader(loader, 2, rank)) for rank in (0, 1)]
    assert shards == [list(range(0, 20, 2)), list(range(1, 20, 2))]
    sampler = distributed_loader(loader, 2, 0).sampler
    assert isinstance(sampler, DistributedSampler) and sampler.shuffle is False


def test_shuffles_exactly_when_the_user_shuffled_and_set_epoch_changes_the_order(monkeypatch):
    monkeypatch.setenv("TORCHPLUG_GLOBAL_SEED", "7")
    loader = DataLoader(DATA, batch_size=4, shuffle=True)
    ranks = [distributed_loader(loader, 2, rank) for rank in (0, 1)]
    assert all(r.sampler.shuffle and r.sampler.seed == 7 for r in ranks)
    epoch0 = [indices(r) for r in ranks]
    assert sorted(epoch0[0] + epoch0[1]) == list(range(20))  # disjoint, complete
    assert epoch0[0] != list(range(0, 20, 2))
    for r in ranks:
        r.sampler.set_epoch(1)
    assert [indices(r) for r in ranks] != epoch0


def test_everything_else_about_the_loader_is_kept():
    def collate(batch):
        return torch.stack([b[0] for b in batch]) * 10

    generator = torch.Generator()
    loader = DataLoader(DATA, batch_size=3, collate_fn=collate, drop_last=True, pin_memory=False, timeout=0,
                        generator=generator, num_workers=0)  # fmt: skip
    new = distributed_loader(loader, 2, 1)
    assert (new.batch_size, new.drop_last, new.timeout, new.collate_fn, new.generator) == (3, True, 0, collate, generator)
    assert len(new) == 3  # 10 samples on this rank, batches of 3, last one dropped
    assert next(iter(new)).flatten().tolist() == [10.0, 30.0, 50.0]


def test_user_samplers_iterable_datasets_and_subclasses():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    assert not needs_distributed_sampler(DataLoader(Stream()))
    assert not needs_distributed_sampler(DataLoader(DATA, sampler=[3, 2, 1]))
    assert not needs_distributed_sampler(DataLoader(DATA, sampler=DistributedSampler(DATA, 2, 0)))

    class Buckets(BatchSampler):
        pass

    assert not needs_distributed_sampler(DataLoader(DATA, batch_sampler=Buckets(SequentialSampler(DATA), 2, False)))
    assert needs_distributed_sampler(DataLoader(DATA, batch_size=2))

    class MyLoader(DataLoader):
        def __init__(self, data, tag):
            super().__init__(data, batch_size=5)
            self.tag = tag

    new = distributed_loader(MyLoader(DATA, "x"), 2, 1)
    assert type(new) is MyLoader and new.tag == "x" and indices(new) == list(range(1, 20, 2))
