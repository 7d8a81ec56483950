"""The DistributedSampler swap (``torchplug.distributed.distributed_loader``/``needs_distributed_sampler``, defined in
``torchplug.utilities``) and how ``ProcessGroupStrategy`` applies it, on real DataLoaders: no process group is
needed to build one."""

import pytest
import torch
from distributed_test_support import clear_distributed_variables
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from torchplug import Trainer
from torchplug.distributed import ProcessGroupStrategy, distributed_loader, needs_distributed_sampler
from torchplug.testing import QUIET

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
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
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


@pytest.fixture
def rank_1_of_2(monkeypatch):
    """This process as our launcher's local rank 1 of 2 (no process is started, no process group is made)."""
    clear_distributed_variables(monkeypatch)
    for k, v in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)


def _strategy_trainer(**kwargs):
    trainer = Trainer(strategy=ProcessGroupStrategy(), accelerator="cpu", devices=2, **QUIET, **kwargs)
    trainer.world = trainer.hook.torchplug_world(trainer=trainer)  # the first setup hook, as a run calls it
    return trainer


def test_the_strategy_shards_every_stage_and_moves_the_fit_samplers_to_each_epoch(rank_1_of_2):
    trainer = _strategy_trainer()
    assert (trainer.world.global_rank, trainer.world.world_size) == (1, 2)
    shuffled = DataLoader(DATA, batch_size=4, shuffle=True)
    train = trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=shuffled, stage="fit")
    val = trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=DataLoader(DATA, batch_size=4), stage="validate")
    assert isinstance(train.sampler, DistributedSampler) and (train.sampler.rank, train.sampler.num_replicas) == (1, 2)
    assert indices(val) == list(range(1, 20, 2))  # evaluation is sharded too, unshuffled
    trainer.hook.torchplug_on_train_epoch_start(trainer=trainer, epoch=3)
    assert train.sampler.epoch == 3 and val.sampler.epoch == 0  # only the training sampler follows the epochs
    # the user's own sampler is kept, and set_epoch reaches it as well
    own = DistributedSampler(DATA, num_replicas=2, rank=1, shuffle=True)
    kept = trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=DataLoader(DATA, sampler=own), stage="fit")
    assert kept.sampler is own
    trainer.hook.torchplug_on_train_epoch_start(trainer=trainer, epoch=5)
    assert own.epoch == 5
    # a new run (setup starts with torchplug_world) forgets the samplers of the last one
    trainer.hook.torchplug_teardown(trainer=trainer)
    trainer.hook.torchplug_on_train_epoch_start(trainer=trainer, epoch=7)
    assert own.epoch == 5


def test_use_distributed_sampler_false_keeps_the_loaders(rank_1_of_2):
    trainer = _strategy_trainer(use_distributed_sampler=False)
    loader = DataLoader(DATA, batch_size=4)
    assert trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=loader, stage="fit") is loader
