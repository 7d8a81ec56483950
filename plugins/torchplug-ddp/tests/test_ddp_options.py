"""DDPStrategy's constructor, as Lightning's: its options, the object form of ``Trainer(strategy=...)``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from torch.utils.data import DataLoader

from torchplug import Callback, MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_data
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


class FailsInTraining(BoringModel):
    def training_step(self, batch, batch_idx):
        raise RuntimeError("Error during train")


class CountExceptions(Callback):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_exception(self, trainer, pl_module, exception):
        self.seen.append(type(exception).__name__)


def test_the_callers_callbacks_see_an_exception_raised_in_spawned_processes(tmp_path):
    counter = CountExceptions()
    trainer = Trainer(strategy=DDPSpawnStrategy(start_method="fork"), accelerator="cpu", devices=1,
                      callbacks=[counter], max_steps=1, default_root_dir=str(tmp_path), **QUIET)  # fmt: skip
    with pytest.raises(Exception, match="Error during train"):
        trainer.fit(FailsInTraining(), DataLoader(regression_data(8), batch_size=4))
    assert len(counter.seen) == 1  # once, in this process (the spawned copy counted its own)
    assert trainer.interrupted
