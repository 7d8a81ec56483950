"""DDPStrategy's constructor, as Lightning's: its options, the object form of ``Trainer(strategy=...)``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET
from torchplug_ddp import DDPSpawnStrategy, DDPStrategy


def test_lightnings_constructor_arguments_are_kept():
    strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo", timeout=timedelta(seconds=90),
                           start_method="spawn")  # fmt: skip
    assert strategy.find_unused_parameters is True
    assert strategy.process_group_backend == "gloo"
    assert strategy.timeout == timedelta(seconds=90)
    assert strategy.start_method == "spawn"
    assert DDPStrategy(timeout=5).timeout == timedelta(seconds=5)


def test_an_instance_is_the_trainers_strategy():
    strategy = DDPSpawnStrategy(find_unused_parameters=True, process_group_backend="gloo")
    trainer = Trainer(strategy=strategy, accelerator="cpu", devices=2, **QUIET)
    assert trainer.strategy is strategy
    assert trainer.world_size == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"timeout": -1}, "timeout=-1: expected a datetime.timedelta or a number of seconds > 0"),
     ({"start_method": "forkserver"}, "start_method='forkserver': use 'popen', 'spawn', 'fork'")],
)  # fmt: skip
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(MisconfigurationError, match=match):
        DDPStrategy(**kwargs)


def test_is_distributed_is_deprecated_and_true():
    with pytest.deprecated_call(match=r"`DDPStrategy.is_distributed` is deprecated"):
        assert DDPStrategy().is_distributed is True
