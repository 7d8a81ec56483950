"""Trainer(profiler="simple"): hooks, datamodule calls and epochs timed under Lightning's action names."""

import pytest

from torchplug import DataModule, MisconfigurationError, Trainer
from torchplug.profilers import PassThroughProfiler, SimpleProfiler
from torchplug.testing import QUIET, BoringModel, regression_loader


def test_simple_profiler_times_hooks_datamodule_calls_and_epochs(tmp_path):
    class Data(DataModule):
        def train_dataloader(self):
            return regression_loader(16, 8)

    class Hooked(BoringModel):
        def on_train_start(self):
            pass

    profiler = SimpleProfiler(dirpath=tmp_path, filename="report")
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=2, profiler=profiler)
    trainer.fit(Hooked(), datamodule=Data())
    durations = profiler.recorded_durations
    assert len(durations["run_training_epoch"]) == 2
    assert len(durations["[LightningDataModule]Data.setup"]) == 1
    assert len(durations["[LightningModule]Hooked.on_train_start"]) == 1
    assert not any(name.startswith("[Callback]") for name in durations)  # QUIET: no callbacks
    report = (tmp_path / "fit-report.txt").read_text()
    assert "run_training_epoch" in report and "Mean (s)" in report


def test_without_a_profiler_nothing_is_timed_and_unknown_names_are_refused():
    trainer = Trainer(accelerator="cpu", **QUIET)
    assert isinstance(trainer.profiler, PassThroughProfiler)
    with pytest.raises(MisconfigurationError, match="profiler='advanced': torchplug has the 'simple' profiler"):
        Trainer(accelerator="cpu", profiler="advanced")
