"""The Timer callback: time per stage, a training time limit, its state in checkpoints."""

import logging
from datetime import timedelta

import pytest

from torchplug import MisconfigurationError, Trainer
from torchplug.callbacks import Timer
from torchplug.testing import QUIET, BoringModel, regression_loader


class Model(BoringModel):
    def train_dataloader(self):
        return regression_loader(32, 8)

    def val_dataloader(self):
        return regression_loader(16, 8)

    def test_dataloader(self):
        return regression_loader(16, 8)


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [(None, None), ("00:00:00:22", 22), ("01:02:03:04", 93784), (timedelta(minutes=2), 120),
     ({"hours": 1, "seconds": 5}, 3605)],
)  # fmt: skip
def test_duration_forms(duration, seconds):
    assert Timer(duration=duration).time_remaining() == seconds


@pytest.mark.parametrize("duration", ["6:00:00", "60 minutes", {"fortnights": 1}, 12])
def test_bad_durations_and_intervals_are_refused(duration):
    with pytest.raises(MisconfigurationError, match=r"Timer\(duration="):
        Timer(duration=duration)
    with pytest.raises(MisconfigurationError, match=r"Timer\(interval='hourly'\).*step, epoch"):
        Timer(interval="hourly")


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_used_up_duration_stops_training_before_the_first_step(interval, caplog):
    timer = Timer(duration=timedelta(0), interval=interval)
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=3, callbacks=[timer])
    with caplog.at_level(logging.INFO, logger="torchplug"):
        trainer.fit(Model())
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert "Time limit reached" in caplog.text


def test_min_epochs_wins_over_the_time_limit():
    timer = Timer(duration=timedelta(0))
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=5, min_epochs=2, callbacks=[timer])
    trainer.fit(Model())
    assert trainer.current_epoch == 2 and timer.time_elapsed() > 0


def test_stages_are_timed_and_the_training_time_is_resumed_from_a_checkpoint(tmp_path):
    timer = Timer(duration="01:00:00:00")
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=3, callbacks=[timer])
    trainer.fit(Model())
    train = timer.time_elapsed("train")
    assert train == timer.time_elapsed() > 0 and timer.time_elapsed("validate") > 0
    assert timer.time_elapsed("test") == 0 and timer.start_time("test") is None
    assert timer.end_time("train") >= timer.start_time("train")
    assert timer.time_remaining() == pytest.approx(86400 - train)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    trainer.test(Model(), verbose=False)
    assert timer.time_elapsed("test") > 0

    resumed = Timer(duration="01:00:00:00")
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=4, callbacks=[resumed])
    trainer.fit(Model(), ckpt_path=tmp_path / "run.ckpt")
    assert resumed._offset == pytest.approx(train)
    assert resumed.time_elapsed() > train
