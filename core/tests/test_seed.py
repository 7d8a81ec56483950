"""``seed_everything``, ``reset_seed`` and seeded dataloader workers, under Lightning's environment names."""

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from torchplug import Trainer, seed_everything
from torchplug.testing import QUIET, BoringModel
from torchplug.utilities import reset_seed, with_seeded_workers, worker_init_function


@pytest.fixture(autouse=True)
def _restore_environment(clean_env):
    os.environ.pop("PL_GLOBAL_SEED", None)
    os.environ.pop("PL_SEED_WORKERS", None)


def test_seed_everything_leaves_lightnings_variables():
    assert seed_everything(123, workers=True) == 123
    assert os.environ["PL_GLOBAL_SEED"] == "123"
    assert os.environ["PL_SEED_WORKERS"] == "1"
    assert seed_everything(5) == 5
    assert os.environ["PL_SEED_WORKERS"] == "0"
    assert not any(name.startswith("TORCHPLUG_") and "SEED" in name for name in os.environ)


def test_seed_from_the_environment_or_zero():
    os.environ["PL_GLOBAL_SEED"] = "42"
    assert seed_everything() == 42
    del os.environ["PL_GLOBAL_SEED"]
    with pytest.warns(UserWarning, match="No seed found, seed set to 0"):
        assert seed_everything() == 0


def test_bad_seeds_are_named():
    os.environ["PL_GLOBAL_SEED"] = "forty-two"
    with pytest.raises(ValueError, match=r"Invalid seed specified via PL_GLOBAL_SEED: 'forty-two'"):
        seed_everything()
    with pytest.raises(ValueError, match=r"-1 is not in bounds, numpy accepts from 0 to 4294967295"):
        seed_everything(-1)
    with pytest.raises(ValueError, match=r"4294967296 is not in bounds"):
        seed_everything(2**32)


def test_reset_seed_replays_the_streams():
    reset_seed()  # never seeded: nothing happens
    assert "PL_GLOBAL_SEED" not in os.environ
    seed_everything(9)
    first = (torch.rand(3), np.random.rand(3), random.random())
    reset_seed()
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class _Draws(Dataset):
    """Each item is what the worker that loads it draws from numpy, ``random`` and torch, and the seed of its torch
    generator (torch gives worker ``i`` the loader's base seed + ``i``, unless a ``worker_init_fn`` seeds again)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        draws = torch.tensor([np.random.rand(), random.random(), torch.rand(()).item()], dtype=torch.float64)
        return draws, torch.tensor(torch.initial_seed() % 2**62)


class _Predict(BoringModel):
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return batch


def _worker_draws(**loader_options):
    loader = DataLoader(_Draws(), batch_size=1, num_workers=2, **loader_options)
    batches = Trainer(accelerator="cpu", **QUIET).predict(_Predict(), loader)
    draws, seeds = (torch.cat(column) for column in zip(*batches))  # items 0, 2 from worker 0; 1, 3 from worker 1
    return draws, seeds


def test_workers_draw_distinct_reproducible_streams():
    seed_everything(3, workers=True)
    draws, seeds = _worker_draws()
    assert seeds[1] - seeds[0] != 1  # the Trainer gave the loader worker_init_function
    assert not torch.equal(draws[0], draws[1])
    seed_everything(3, workers=True)
    assert torch.equal(draws, _worker_draws()[0])
    seed_everything(4, workers=True)
    assert not torch.equal(draws, _worker_draws()[0])
    seed_everything(3)
    _, unseeded = _worker_draws()
    assert unseeded[1] - unseeded[0] == 1  # torch's own seeding alone


def test_the_workers_flag_decides_whether_loaders_change():
    loader = DataLoader(_Draws(), num_workers=2)
    seed_everything(3)
    assert with_seeded_workers(loader, rank=0) is loader
    seed_everything(3, workers=True)
    seeded = with_seeded_workers(loader, rank=1)
    assert loader.worker_init_fn is None  # the user's loader is not changed
    assert seeded.worker_init_fn.func is worker_init_function and seeded.worker_init_fn.keywords == {"rank": 1}
    assert with_seeded_workers(DataLoader(_Draws()), rank=0).worker_init_fn is None  # no workers: nothing to seed


def test_a_users_worker_init_fn_is_kept():
    def mine(worker_id):
        np.random.seed(100)
        random.seed(100)

    seed_everything(3, workers=True)
    draws, _ = _worker_draws(worker_init_fn=mine)
    assert torch.equal(draws[0, :2], draws[1, :2])  # both workers seeded alike, by the user's function


def test_worker_seeds_depend_on_rank():
    def draw(rank):
        torch.manual_seed(1000)  # as torch seeds a worker: base seed + worker id
        worker_init_function(0, rank=rank)
        return np.random.rand(), random.random(), torch.rand(()).item()

    assert draw(0) == draw(0)
    assert all(a != b for a, b in zip(draw(0), draw(1)))
