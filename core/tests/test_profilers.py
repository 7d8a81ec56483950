"""Profilers: Trainer(profiler="simple" | "advanced" | "pytorch") and the profilers used on their own."""

import copy
import os
import pickle
import time

import pytest
import torch

from torchplug import Callback, DataModule, MisconfigurationError, Trainer
from torchplug.profilers import (
    AdvancedProfiler,
    PassThroughProfiler,
    PyTorchProfiler,
    RegisterRecordFunction,
    SimpleProfiler,
)
from torchplug.testing import QUIET, BoringModel, regression_loader


class Data(DataModule):
    def train_dataloader(self):
        return regression_loader(16, 8)

    def val_dataloader(self):
        return regression_loader(16, 8)

    def test_dataloader(self):
        return regression_loader(16, 8)


class Noop(Callback):
    """A callback that overrides no hook: a profiled run still times its hooks, as Lightning's does."""


def test_simple_profiler_times_hooks_steps_datamodule_calls_and_epochs(tmp_path):
    class Hooked(BoringModel):
        def on_train_start(self):
            pass

    profiler = SimpleProfiler(dirpath=tmp_path, filename="report")
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=2, profiler=profiler, callbacks=[Noop()])
    trainer.fit(Hooked(), datamodule=Data())
    durations = profiler.recorded_durations
    assert len(durations["run_training_epoch"]) == 2
    assert len(durations["[LightningDataModule]Data.setup"]) == 1
    assert len(durations["[LightningModule]Hooked.on_train_start"]) == 1
    assert len(durations["[Strategy]SingleDeviceStrategy.training_step"]) == 4
    assert len(durations["[Strategy]SingleDeviceStrategy.backward"]) == 4
    assert len(durations["[Strategy]SingleDeviceStrategy.validation_step"]) == 2 + 4  # sanity check, 2 epochs
    assert len(durations["[Callback]Noop.on_train_epoch_end"]) == 2
    # each batch fetched, by Lightning's names: 2 epochs of 2 batches; the 2-batch sanity check and 2 validations
    assert len(durations["[_TrainingEpochLoop].train_dataloader_next"]) == 4
    assert len(durations["[_EvaluationLoop].val_next"]) == 2 + 4
    assert len(durations["[Strategy]SingleDeviceStrategy.batch_to_device"]) == 4 + 2 + 4
    # one process: no rank in the name; the report appended per stage, the file closed at the end of it
    report = (tmp_path / "fit-report.txt").read_text()
    assert (
        report.startswith("FIT Profiler Report")
        and "Mean duration (s)" in report
        and "Percentage %" in report
    )
    assert profiler._output_file is None
    trainer.test(Hooked(), datamodule=Data())
    assert (tmp_path / "test-report.txt").read_text().startswith("TEST Profiler Report")


def test_simple_profiler_report_dirpath_defaults_to_the_log_dir(tmp_path):
    profiler = SimpleProfiler(filename="profiler")
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path / "new", max_epochs=1, limit_train_batches=1,
                      limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, profiler=profiler)  # fmt: skip
    trainer.fit(BoringModel(), datamodule=Data())
    assert profiler.dirpath == trainer.log_dir == str(tmp_path / "new")
    assert (tmp_path / "new" / "fit-profiler.txt").exists()


def test_simple_profiler_durations_errors_and_tables():
    profiler = SimpleProfiler(extended=False)
    with profiler.profile("sleep"):
        time.sleep(0.05)
    assert profiler.recorded_durations["sleep"][0] == pytest.approx(0.05, abs=0.04)
    with pytest.raises(
        ValueError, match=r"Attempting to stop recording an action \(nope\) which was never started"
    ):
        profiler.stop("nope")
    profiler.start("twice")
    with pytest.raises(ValueError, match="Attempted to start twice which has already started"):
        profiler.start("twice")
    profiler.stop("twice")
    table = profiler.summary()
    assert "Num calls" not in table and table.index("sleep") < table.index("twice")  # longest mean first
    profiler.extended = True
    assert "|  Total" in profiler.summary() and "Num calls" in profiler.summary()
    assert copy.deepcopy(profiler).recorded_durations["sleep"] == profiler.recorded_durations["sleep"]


def test_advanced_profiler_reports_functions_per_action_and_dumps_stats(tmp_path):
    def slow_function():
        return sum(range(20_000))

    profiler = AdvancedProfiler(
        dirpath=tmp_path, filename="advanced", dump_stats=True, line_count_restriction=5
    )
    with profiler.profile("outer/with:unsafe"):
        slow_function()
        with profiler.profile("inner"):  # nesting works: the inner action pauses the outer one
            slow_function()
    assert {"outer/with:unsafe", "inner"} <= set(profiler.profiled_actions)
    with pytest.raises(ValueError, match="never started"):
        profiler.stop("other")
    profiler.describe()
    text = (tmp_path / "advanced.txt").read_text()
    assert "Profile stats for: outer/with:unsafe" in text and "slow_function" in text
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".prof")) == [
        "advanced-inner.prof",
        "advanced-outer_with_unsafe.prof",
    ]
    assert not profiler.profiled_actions  # cleared on teardown
    for copied in (copy.deepcopy(profiler), pickle.loads(pickle.dumps(profiler))):
        assert copied.line_count_restriction == 5 and not copied.profiled_actions


def test_advanced_profiler_in_a_trainer(tmp_path):
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, profiler="advanced", limit_train_batches=1)
    assert isinstance(trainer.profiler, AdvancedProfiler)
    trainer.fit(BoringModel(), datamodule=Data())


def test_pytorch_profiler_records_labelled_actions_and_module_layers(tmp_path):
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="torch", schedule=None)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with profiler.profile("outer"), RegisterRecordFunction(model):
        with profiler.profile("inner"):
            model(torch.ones(1, 2))
    profiler.describe()
    names = {e.name for e in profiler.function_events}
    assert {"[pl][profile]outer", "[pl][profile]inner", "aten::linear"} <= names
    assert "[pl][module]torch.nn.modules.linear.Linear: 0" in names
    assert "[pl][module]torch.nn.modules.activation.ReLU: 1" in names
    assert "Profile stats for: records" in (tmp_path / "torch.txt").read_text()
    assert copy.deepcopy(profiler).profiler is None


@pytest.mark.parametrize("limit", [2, 6])
def test_pytorch_profiler_in_a_fit_writes_traces_and_labels_the_steps(tmp_path, limit):
    profiler = PyTorchProfiler(dirpath=tmp_path, filename="prof")
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=limit, limit_val_batches=limit,
                      num_sanity_val_steps=0, profiler=profiler)  # fmt: skip
    if (
        limit < 5
    ):  # the default schedule (wait 1, warm-up 1, record 3) needs 5 steps: all are recorded instead
        with pytest.warns(UserWarning, match="not enough steps to properly record traces"):
            trainer.fit(_Loaders(limit))
    else:
        trainer.fit(_Loaders(limit))
    names = {e.name for e in profiler.function_events}
    assert "[pl][profile][Strategy]SingleDeviceStrategy.validation_step" in names
    assert "[pl][module]torch.nn.modules.linear.Linear: layer" in names
    traces = [f for f in os.listdir(tmp_path) if f.endswith(".pt.trace.json")]
    assert traces and all(f.startswith("fit-prof-") for f in traces)
    assert (tmp_path / "fit-prof.txt").read_text()


class _Loaders(BoringModel):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return regression_loader(8 * self.batches, 8)

    def val_dataloader(self):
        return regression_loader(8 * self.batches, 8)


def test_pytorch_profiler_refuses_bad_arguments():
    with pytest.raises(MisconfigurationError, match="Found sort_by_key: wall"):
        PyTorchProfiler(sort_by_key="wall")
    with pytest.raises(KeyError, match="Found invalid table_kwargs key: row_limit. This is already"):
        PyTorchProfiler(table_kwargs={"row_limit": 3})
    with pytest.raises(KeyError, match="Found invalid table_kwargs key: colour"):
        PyTorchProfiler(table_kwargs={"colour": 3})
    with pytest.raises(MisconfigurationError, match="Schedule should be a callable"):
        PyTorchProfiler(schedule=3)
    with pytest.raises(
        MisconfigurationError, match="Schedule should return a `torch.profiler.ProfilerAction`"
    ):
        PyTorchProfiler(schedule=lambda step: "record")
    if not torch.cuda.is_available():
        with pytest.raises(MisconfigurationError, match="emit_nvtx=True.*CUDA is not available"):
            PyTorchProfiler(emit_nvtx=True)


@pytest.mark.parametrize(
    ("name", "expected"),
    [(None, PassThroughProfiler), ("simple", SimpleProfiler), ("Advanced", AdvancedProfiler),
     ("pytorch", PyTorchProfiler)],
)  # fmt: skip
def test_trainer_profiler_names(name, expected):
    assert isinstance(Trainer(accelerator="cpu", profiler=name).profiler, expected)


def test_unknown_profiler_names_are_refused():
    with pytest.raises(
        MisconfigurationError, match=r"it can only be one of \['simple', 'advanced', 'pytorch'\]"
    ):
        Trainer(accelerator="cpu", profiler="fancy")
    with pytest.raises(MisconfigurationError, match=r"Trainer\(profiler=3\): expected one of"):
        Trainer(accelerator="cpu", profiler=3)


def test_datamodule_state_is_profiled_once_per_saved_checkpoint(tmp_path):
    profiler = SimpleProfiler()
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=1, limit_train_batches=1,
                      limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      profiler=profiler)  # fmt: skip
    trainer.fit(BoringModel(), datamodule=Data())
    # one checkpoint saved; the check that the state can be saved, at the start, is not counted
    assert len(profiler.recorded_durations["[LightningDataModule]Data.state_dict"]) == 1
    trainer.test(BoringModel(), datamodule=Data(), verbose=False)
    assert len(profiler.recorded_durations["[_EvaluationLoop].test_next"]) == 2
