"""Stopping on a signal, one process (torchplug._stopping): real signals, sent to this very process by a callback
(so the step they land in is known) or to a real child process from outside. The multi-process cases are in
plugins/torchplug-ddp/tests/test_ddp_signals.py, SLURM's requeue in test_ddp_slurm.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader

import torchplug
from torchplug import Callback, SIGTERMException, Trainer
from torchplug.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from torchplug.loggers import CSVLogger
from torchplug.testing import BoringModel, regression_data

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread"
)


class SignalAt(Callback):
    """Sends a real signal to this process at the end of a training batch (after ``batch`` batches, counted over the
    run) or of a test batch."""

    def __init__(self, signum: int, batch: int, stage: str = "train") -> None:
        self.signum, self.batch, self.stage, self.seen = signum, batch, stage, 0

    def _maybe_send(self) -> None:
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stage == "train":
            self._maybe_send()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.stage == "test":
            self._maybe_send()


class Record(Callback):
    def __init__(self) -> None:
        self.exceptions: list[tuple[str, int, bool]] = []

    def on_exception(self, trainer, pl_module, exception):
        self.exceptions.append((type(exception).__name__, trainer.global_step, trainer.interrupted))


def trainer_for(tmp_path, *callbacks, **kwargs):
    options = dict(accelerator="cpu", max_epochs=2, default_root_dir=str(tmp_path), enable_progress_bar=False,
                   enable_model_summary=False, logger=False, enable_checkpointing=False)  # fmt: skip
    options.update(kwargs)
    return Trainer(callbacks=list(callbacks), **options)


def loader(n=64, batch_size=4):
    return DataLoader(regression_data(n), batch_size=batch_size, shuffle=True)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def uninterrupted(tmp_path, **kwargs):
    torchplug.seed_everything(1)
    model = BoringModel(lr=0.01)
    trainer_for(tmp_path / "reference", **kwargs).fit(model, loader())
    return weights(model)


@pytest.mark.parametrize(("signum", "code", "exception"), [(signal.SIGTERM, 143, "SIGTERMException"),
                                                          (signal.SIGINT, 1, "KeyboardInterrupt")])  # fmt: skip
def test_a_signal_stops_after_the_step_saves_and_the_run_resumes_exactly(tmp_path, capfd, signum, code, exception):
    torchplug.seed_everything(1)
    model, record = BoringModel(lr=0.01), Record()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ck", save_on_exception=True, save_last=True)
    logger = CSVLogger(tmp_path, name="logs", flush_logs_every_n_steps=1000)  # rows are written at finalize
    trainer = trainer_for(tmp_path, SignalAt(signum, 5), record, checkpoint, logger=logger, log_every_n_steps=1,
                          enable_checkpointing=True)  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(model, loader())
    assert stopped.value.code == code
    assert trainer.interrupted and trainer.global_step == 5
    assert record.exceptions == [(exception, 5, True)]
    saved = tmp_path / "ck" / "epoch=0-step=5.ckpt"
    assert saved.exists() and (tmp_path / "ck" / "last.ckpt").exists()
    rows = list(csv.DictReader(open(logger.log_dir + "/metrics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]  # nothing logged was lost: the logger was finalized
    err = capfd.readouterr().err
    name = signal.Signals(signum).name
    assert f"torchplug: {name} received; stopping after the current step" in err
    assert err.count("torchplug: stopped by") == 1
    assert f"stopped by {name} after step 5 (epoch 0); saved {tmp_path / 'ck'}" in err and "resume with trainer.fit(" in err
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored

    torchplug.seed_everything(1)
    resumed = BoringModel(lr=0.01)
    trainer_for(tmp_path / "again").fit(resumed, loader(), ckpt_path=str(saved))
    assert torch.equal(weights(resumed), uninterrupted(tmp_path))


def test_a_stop_waits_for_the_end_of_the_accumulation_window(tmp_path):
    torchplug.seed_everything(1)
    model = BoringModel(lr=0.01)
    trainer = trainer_for(tmp_path, SignalAt(signal.SIGTERM, 4), ModelCheckpoint(dirpath=tmp_path, save_on_exception=True),
                          accumulate_grad_batches=3, enable_checkpointing=True)  # fmt: skip
    with pytest.raises(SystemExit):
        trainer.fit(model, loader())
    assert trainer.global_step == 2 and trainer.progress.batches_done == 6  # batch 4 opened a window of 3
    torchplug.seed_everything(1)
    resumed = BoringModel(lr=0.01)
    trainer_for(tmp_path / "again", accumulate_grad_batches=3).fit(resumed, loader(), ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    assert torch.equal(weights(resumed), uninterrupted(tmp_path, accumulate_grad_batches=3))


def test_sigterm_exception_is_a_system_exit_with_the_signal_status():
    exc = SIGTERMException(signal.SIGUSR1)
    assert isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGUSR1 and exc.signum == signal.SIGUSR1


def test_a_signal_in_the_last_batch_of_an_epoch_stops_after_the_epoch_ends(tmp_path):
    ends = []

    class EpochEnds(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            ends.append(trainer.current_epoch)

    trainer = trainer_for(tmp_path, SignalAt(signal.SIGTERM, 16), EpochEnds(), max_epochs=3)
    with pytest.raises(SystemExit):
        trainer.fit(BoringModel(), loader())  # 16 batches per epoch
    assert ends == [0] and trainer.current_epoch == 1 and trainer.global_step == 16


def test_a_signal_stops_a_test_stage_between_batches(tmp_path):
    record = Record()
    trainer = trainer_for(tmp_path, SignalAt(signal.SIGINT, 3, stage="test"), record)
    with pytest.raises(SystemExit) as stopped:
        trainer.test(BoringModel(), loader())
    assert stopped.value.code == 1 and trainer.interrupted
    assert record.exceptions == [("KeyboardInterrupt", 0, True)]


def test_a_signal_that_comes_after_the_last_step_leaves_the_fit_finished(tmp_path):
    class Late(Callback):
        def on_train_end(self, trainer, pl_module):
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = trainer_for(tmp_path, Late(), max_epochs=1)
    trainer.fit(BoringModel(), loader())  # the work was done: nothing is stopped, nothing raised
    assert not trainer.interrupted and trainer.global_step == 16
    with pytest.raises(SystemExit):  # the request stays pending: the next stage stops at its first batch
        trainer.test(BoringModel(), loader())


def test_model_checkpoint_saves_on_any_exception_as_lightning(tmp_path):
    class Breaks(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise ValueError("broken step")
            return super().training_step(batch, batch_idx)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_exception=True)
    trainer = trainer_for(tmp_path, checkpoint, enable_checkpointing=True)
    with pytest.raises(ValueError, match="broken step"):
        trainer.fit(Breaks(), loader())
    assert trainer.interrupted  # as Lightning's: any exception interrupts
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=3.ckpt"]


def test_model_checkpoint_does_not_save_twice_for_one_step(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_on_exception=True, every_n_train_steps=5)
    trainer = trainer_for(tmp_path, checkpoint, SignalAt(signal.SIGTERM, 5), enable_checkpointing=True)
    with pytest.raises(SystemExit):
        trainer.fit(BoringModel(), loader())
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=5.ckpt"]


def test_on_exception_checkpoint_keeps_its_file_after_a_stop_and_removes_it_after_a_finished_run(tmp_path):
    callback = OnExceptionCheckpoint(tmp_path / "ex")
    assert callback.ckpt_path == str(tmp_path / "ex" / "on_exception.ckpt")
    trainer = trainer_for(tmp_path, callback, SignalAt(signal.SIGINT, 2))
    with pytest.raises(SystemExit):
        trainer.fit(BoringModel(), loader())
    saved = torchplug.load_checkpoint(callback.ckpt_path)
    assert saved["global_step"] == 2
    trainer_for(tmp_path, callback, max_epochs=1).fit(BoringModel(), loader(), ckpt_path=callback.ckpt_path)
    assert not os.path.exists(callback.ckpt_path)  # a stage that finished removes what an interrupted one left
    with pytest.raises(torchplug.MisconfigurationError, match="filename=''"):
        OnExceptionCheckpoint(tmp_path, filename="")


SCRIPT = """
import os, sys, time
from torch.utils.data import DataLoader
from torchplug import Callback, Trainer
from torchplug.testing import BoringModel, regression_data

OUT, SLOW = sys.argv[1], sys.argv[2] == "slow"

class Model(BoringModel):
    def training_step(self, batch, batch_idx):
        if batch_idx == 3:
            open(os.path.join(OUT, "training"), "w").close()
        time.sleep(0.01)
        return super().training_step(batch, batch_idx)

class SlowSave(Callback):
    def on_exception(self, trainer, pl_module, exception):
        open(os.path.join(OUT, "stopping"), "w").close()
        if SLOW:
            time.sleep(120)  # a save that takes long: a second Ctrl-C must not wait for it

if __name__ == "__main__":
    trainer = Trainer(accelerator="cpu", max_epochs=1000, default_root_dir=OUT, enable_progress_bar=False, enable_model_summary=False,
                      logger=False, callbacks=[SlowSave()])
    trainer.fit(Model(), DataLoader(regression_data(64), batch_size=4))
"""


def start_script(tmp_path, mode):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip


def wait_for(path, proc, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_from_outside_exits_1_with_one_line_and_no_traceback(tmp_path):
    proc = start_script(tmp_path, "fast")
    try:
        wait_for(tmp_path / "training", proc)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
        latency = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 1, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.count("torchplug: stopped by SIGINT after step") == 1, output
    print(f"SIGINT -> exit: {latency:.2f} s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_second_signal_while_stopping_exits_at_once(tmp_path):
    proc = start_script(tmp_path, "slow")
    try:
        wait_for(tmp_path / "training", proc)
        proc.send_signal(signal.SIGINT)
        wait_for(tmp_path / "stopping", proc)  # on_exception is busy with its two-minute save
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT, output
    assert time.monotonic() - sent < 15
    assert "torchplug: SIGINT again: exiting at once, without saving" in output, output


def test_preemption_options_are_checked_and_named():
    from torchplug.distributed import ProcessGroupStrategy
    from torchplug.environments import SLURMEnvironment, TorchElasticEnvironment

    assert SLURMEnvironment().requeue_signal == signal.SIGUSR1 and SLURMEnvironment().auto_requeue
    assert SLURMEnvironment(requeue_signal="usr2").requeue_signal == signal.SIGUSR2
    assert SLURMEnvironment(requeue_signal="SIGHUP").requeue_signal == signal.SIGHUP
    with pytest.raises(torchplug.MisconfigurationError, match=r"requeue_signal='USR9'.*signal.SIGUSR1"):
        SLURMEnvironment(requeue_signal="USR9")
    with pytest.raises(torchplug.MisconfigurationError, match=r"auto_requeue='yes'"):
        SLURMEnvironment(auto_requeue="yes")
    with pytest.raises(torchplug.MisconfigurationError, match=r"resume_on_restart=1"):
        TorchElasticEnvironment(resume_on_restart=1)
    assert ProcessGroupStrategy().hang_timeout == 600 and ProcessGroupStrategy(hang_timeout=None).hang_timeout is None
    for bad in (0, -5, "10", True):
        with pytest.raises(torchplug.MisconfigurationError, match=rf"hang_timeout={bad!r}: give the seconds"):
            ProcessGroupStrategy(hang_timeout=bad)


def test_a_slurm_job_records_its_checkpoints_for_a_restart_and_a_finished_fit_removes_the_record(tmp_path, monkeypatch):
    """The bookkeeping of a restart, in one process: SIGTERM (what SLURM sends at a time limit or a preemption) saves
    the restart checkpoint without requeuing; the variables are the ones SLURM sets in a job's tasks. The requeue
    itself runs on a real cluster in plugins/torchplug-ddp/tests/test_ddp_slurm.py."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    trainer = trainer_for(tmp_path, SignalAt(signal.SIGTERM, 3), plugins=["slurm"], max_epochs=1)
    with pytest.raises(SystemExit) as stopped:
        trainer.fit(BoringModel(), loader())
    assert stopped.value.code == 143
    record = tmp_path / "restart" / "slurm-4242.json"
    assert json.loads(record.read_text())["global_step"] == 3
    assert (tmp_path / "restart" / "slurm-4242.ckpt").exists()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = trainer_for(tmp_path, plugins=["slurm"], max_epochs=1)
    again.fit(BoringModel(), loader())
    assert again.ckpt_path == str(tmp_path / "restart" / "slurm-4242.ckpt") and again.global_step == 16
    assert list((tmp_path / "restart").iterdir()) == []
