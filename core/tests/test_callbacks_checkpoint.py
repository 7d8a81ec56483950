"""ModelCheckpoint: names, top-k retention by a monitored metric, step-based saving, last.ckpt, state round trip."""

from __future__ import annotations

import inspect
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug._checkpoint import load_checkpoint
from torchplug.callbacks import ModelCheckpoint
from torchplug.loggers import CSVLogger


class Scripted(torchplug.Module):
    """Logs ``score`` = ``scores[current_epoch]`` in validation, so the ranking of epochs is known in advance."""

    def __init__(self, scores: list[float] | None = None, log_in_training: bool = False) -> None:
        super().__init__()
        self.scores = scores or [0.0] * 100
        self.log_in_training = log_in_training
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        if self.log_in_training:
            self.log("train_score", torch.tensor(self.scores[self.current_epoch]), on_step=False, on_epoch=True)
        return self.layer(x).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", torch.tensor(self.scores[self.current_epoch]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=4)  # n/4 batches


def _trainer(root: Path, callbacks: list[Any], **kwargs: Any) -> torchplug.Trainer:
    options: dict[str, Any] = dict(
        default_root_dir=root, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    options.update(kwargs)
    return torchplug.Trainer(accelerator="cpu", callbacks=callbacks, **options)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------------ naming, arguments
def test_filename_templates_like_lightning() -> None:
    ckpt = ModelCheckpoint(dirpath="/ckpts", filename="{epoch}-{step}-{val_loss:.2f}")
    metrics = {"epoch": torch.tensor(3), "step": torch.tensor(400), "val_loss": torch.tensor(0.12345)}
    assert ckpt.format_checkpoint_name(metrics) == os.path.realpath("/ckpts") + "/epoch=3-step=400-val_loss=0.12.ckpt"
    assert ckpt.format_checkpoint_name(metrics, ver=2).endswith("val_loss=0.12-v2.ckpt")
    plain = ModelCheckpoint(filename="model-{epoch:03d}-{val/acc:.3f}", auto_insert_metric_name=False)
    assert plain.format_checkpoint_name({"epoch": 7, "val/acc": torch.tensor(0.5)}) == "model-007-0.500.ckpt"
    # default name; a missing metric formats as 0 (as in Lightning); a ".ckpt" given in filename is not doubled
    assert ModelCheckpoint().format_checkpoint_name({"epoch": 1, "step": 9}) == "epoch=1-step=9.ckpt"
    assert ModelCheckpoint(filename="{nope}.ckpt").format_checkpoint_name({}) == "nope=0.ckpt"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "mean"}, "mode='mean'"),
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"save_top_k": 3}, "monitor=None"),
        ({"every_n_epochs": 2, "every_n_train_steps": 5}, "only one"),
        ({"every_n_train_steps": -1}, "every_n_train_steps=-1"),
        ({"train_time_interval": 5}, "timedelta"),
        ({"save_last": "yes"}, "save_last='yes'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationError, match=match):
        ModelCheckpoint(**kwargs)


def test_state_key_distinguishes_instances() -> None:
    a = ModelCheckpoint(monitor="val_loss")
    b = ModelCheckpoint(monitor="val_acc", mode="max")
    assert a.state_key != b.state_key
    assert a.state_key.startswith("ModelCheckpoint{") and "'monitor': 'val_loss'" in a.state_key


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize(
    ("mode", "kept_epochs", "best_epoch"),
    [("min", [3, 4], 3), ("max", [0, 2], 0)],
)
def test_top_k_retention_by_monitored_metric(tmp_path: Path, mode: str, kept_epochs: list[int], best_epoch: int) -> None:
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}-{score:.1f}", monitor="score", mode=mode,
                           save_top_k=2)  # fmt: skip
    trainer = _trainer(tmp_path, [ckpt], max_epochs=5)
    trainer.fit(Scripted(scores), _loader(), _loader(4))

    expected = [f"epoch={e}-score={scores[e]:.1f}.ckpt" for e in kept_epochs]
    assert _names(tmp_path / "ckpt") == sorted(expected)
    assert Path(ckpt.best_model_path).name == f"epoch={best_epoch}-score={scores[best_epoch]:.1f}.ckpt"
    assert float(ckpt.best_model_score) == scores[best_epoch]
    assert sorted(Path(p).name for p in ckpt.best_k_models) == sorted(expected)
    worst = max(kept_epochs, key=lambda e: scores[e]) if mode == "min" else min(kept_epochs, key=lambda e: scores[e])
    assert Path(ckpt.kth_best_model_path).name == f"epoch={worst}-score={scores[worst]:.1f}.ckpt"
    assert float(ckpt.kth_value) == scores[worst]
    # The best file holds the run as it was after that epoch (2 optimizer steps per epoch).
    best = load_checkpoint(ckpt.best_model_path)
    assert best["epoch"] == best_epoch and best["global_step"] == 2 * (best_epoch + 1)
    assert "optimizer_states" in best


def test_monitor_logged_in_training_without_validation(tmp_path: Path) -> None:
    scores = [2.0, 1.0, 3.0]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_score", filename="{epoch}", save_top_k=1)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=3, limit_val_batches=0)
    trainer.fit(Scripted(scores, log_in_training=True), _loader())
    assert _names(tmp_path / "ckpt") == ["epoch=1.ckpt"]


def test_without_monitor_keeps_latest_and_last(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(save_last=True)  # default folder: <default_root_dir>/checkpoints without a logger
    trainer = _trainer(tmp_path, [ckpt], max_epochs=3)
    trainer.fit(Scripted(), _loader())
    folder = tmp_path / "checkpoints"
    assert _names(folder) == ["epoch=2-step=6.ckpt", "last.ckpt"]
    assert ckpt.best_model_path == str(folder / "epoch=2-step=6.ckpt")
    assert ckpt.last_model_path == str(folder / "last.ckpt")
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 6


def test_default_folder_follows_the_logger(tmp_path: Path) -> None:
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False,
                                enable_model_summary=False)  # fmt: skip
    trainer.fit(Scripted(), _loader())
    assert _names(tmp_path / "lightning_logs" / "version_0" / "checkpoints") == ["epoch=0-step=2.ckpt"]


def test_every_n_train_steps_keeps_all(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=3, limit_val_batches=0)
    trainer.fit(Scripted(), _loader(16))  # 4 steps per epoch, 12 in all
    assert _names(tmp_path / "ckpt") == [
        "epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "epoch=2-step=12.ckpt", "epoch=2-step=9.ckpt",
    ]  # fmt: skip
    assert load_checkpoint(tmp_path / "ckpt" / "epoch=1-step=6.ckpt")["global_step"] == 6


def test_every_n_epochs_and_weights_only(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=2, save_top_k=-1, save_weights_only=True)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=5)
    trainer.fit(Scripted(), _loader())
    assert _names(tmp_path / "ckpt") == ["epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt"]
    content = load_checkpoint(tmp_path / "ckpt" / "epoch=1-step=4.ckpt")
    assert "optimizer_states" not in content and "state_dict" in content


def test_train_time_interval(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", train_time_interval=timedelta(0), save_top_k=-1)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=1, limit_val_batches=0)
    trainer.fit(Scripted(), _loader(12))
    assert _names(tmp_path / "ckpt") == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "epoch=0-step=3.ckpt"]


def test_nothing_saved_during_sanity_check_or_fast_dev_run(tmp_path: Path) -> None:
    saved: list[str] = []

    class Spy(ModelCheckpoint):
        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            saved.append(filepath)
            super()._save_checkpoint(trainer, filepath)

    trainer = _trainer(tmp_path, [Spy(monitor="score", dirpath=tmp_path / "a")], max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(Scripted(), _loader(), _loader(4))
    assert len(saved) == 1  # after the epoch, not after the sanity check
    saved.clear()
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path / "b", fast_dev_run=True, enable_progress_bar=False)
    trainer.fit(Scripted(), _loader(), _loader(4))
    assert saved == [] and not (tmp_path / "b").exists()


def test_missing_monitor_is_an_error(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_los")
    trainer = _trainer(tmp_path, [ckpt], max_epochs=1)
    with pytest.raises(MisconfigurationError, match=r"monitor='val_los'.*\['score'\].*self.log\('val_los'"):
        trainer.fit(Scripted(), _loader(), _loader(4))


def test_version_counter_and_last_link(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"from an older run")
    ckpt = ModelCheckpoint(dirpath=folder, filename="fixed", save_last="link", save_top_k=-1)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=2)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        trainer.fit(Scripted(), _loader())
    # "fixed" is taken by epoch 0, so epoch 1 gets "-v1"; the older last.ckpt is not overwritten either.
    assert _names(folder) == ["fixed-v1.ckpt", "fixed.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert (folder / "last.ckpt").read_bytes() == b"from an older run"
    link = folder / "last-v1.ckpt"
    assert link.is_symlink() and os.readlink(link) == "fixed-v1.ckpt"
    assert load_checkpoint(link)["global_step"] == 4


def test_state_round_trip_through_resume(tmp_path: Path) -> None:
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]

    def make() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", monitor="score", save_top_k=2,
                               save_last=True)  # fmt: skip

    first = make()
    _trainer(tmp_path, [first], max_epochs=2).fit(Scripted(scores), _loader(), _loader(4))
    assert _names(tmp_path / "ckpt") == ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]
    state = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["callbacks"][first.state_key]
    assert state["best_model_path"] == first.best_model_path == str(tmp_path / "ckpt" / "epoch=1.ckpt")
    assert {k: float(v) for k, v in state["best_k_models"].items()} == {
        str(tmp_path / "ckpt" / "epoch=0.ckpt"): 5.0, str(tmp_path / "ckpt" / "epoch=1.ckpt"): 3.0,
    }  # fmt: skip

    restored = make()
    restored.load_state_dict(state)
    assert restored.best_model_path == first.best_model_path and float(restored.kth_value) == 5.0

    # Resuming continues the same top 2: epoch 0's file (from the first run) is dropped when epoch 2 beats it.
    second = make()
    _trainer(tmp_path, [second], max_epochs=5).fit(Scripted(scores), _loader(), _loader(4), ckpt_path="last")
    assert _names(tmp_path / "ckpt") == ["epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"]
    assert Path(second.best_model_path).name == "epoch=3.ckpt"
    assert load_checkpoint(second.last_model_path)["global_step"] == 10


def test_state_from_another_folder_keeps_only_best_path(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "here", monitor="score")
    state = ModelCheckpoint(dirpath=tmp_path / "there", monitor="score").state_dict()
    state["best_model_path"] = str(tmp_path / "there" / "x.ckpt")
    state["best_k_models"] = {state["best_model_path"]: torch.tensor(1.0)}
    with pytest.warns(UserWarning, match="only best_model_path is restored"):
        ckpt.load_state_dict(state)
    assert ckpt.best_model_path == state["best_model_path"] and ckpt.best_k_models == {}


class _RankScores(Scripted):
    """Each rank logs a different score (rank 1: +10) without sync_dist, so ranks would rank epochs differently."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", torch.tensor(self.scores[self.current_epoch] + 10.0 * self.global_rank))


class _Report(torchplug.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        ckpt = trainer.checkpoint_callback
        state = {"best": ckpt.best_model_path, "k": sorted(ckpt.best_k_models), "last": ckpt.last_model_path,
                 "score": float(ckpt.best_model_score)}  # fmt: skip
        Path(self.folder, f"rank{trainer.global_rank}.txt").write_text(repr(state))


@pytest.mark.slow
def test_two_processes_agree_and_only_rank_zero_writes(tmp_path: Path) -> None:
    pytest.importorskip("torchplug_ddp", reason="needs the torchplug-ddp plugin for a real two-process run")
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    ckpt = ModelCheckpoint(filename="{epoch}-{score:.0f}", monitor="score", save_top_k=2, save_last=True)
    trainer = torchplug.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=5, default_root_dir=tmp_path,
        callbacks=[ckpt, _Report(str(tmp_path))], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(_RankScores(scores), _loader(16), _loader(8))
    reports = [eval((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1)]
    # Rank 0's scores decide on both ranks: one folder, the same top 2, the same best file and score.
    assert reports[0] == reports[1]
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert reports[0]["best"] == str(folder / "epoch=3-score=1.ckpt") and reports[0]["score"] == 1.0
    assert _names(folder) == ["epoch=3-score=1.ckpt", "epoch=4-score=2.ckpt", "last.ckpt"]
    assert _names(tmp_path / "lightning_logs") == ["version_0"]  # rank 1 made no folder of its own

    # Resume "last" in two processes: rank 0 finds it and reconciles the folder, both ranks agree on the result.
    # A file the run evicted but did not get to delete (a kill would leave one) is removed.
    shutil.copy(folder / "epoch=3-score=1.ckpt", folder / "epoch=2-score=4.ckpt")
    resumed = torchplug.Trainer(
        strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=6, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, version=0),
        callbacks=[ModelCheckpoint(filename="{epoch}-{score:.0f}", monitor="score", save_top_k=2, save_last=True),
                   _Report(str(tmp_path))],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    resumed.fit(_RankScores([*scores, 0.25]), _loader(16), _loader(8), ckpt_path="last")
    reports = [eval((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1)]
    assert reports[0] == reports[1] and reports[0]["score"] == 0.25
    assert _names(folder) == ["epoch=3-score=1.ckpt", "epoch=5-score=0.ckpt", "last.ckpt"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # validation twice per epoch (every 2 of 4 batches): a save after each validation run
        ({"val_check_interval": 2, "max_epochs": 2},
         ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt"]),
        # validation every 2nd epoch: saves only where the monitor is fresh
        ({"check_val_every_n_epoch": 2, "max_epochs": 4}, ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]),
    ],
)  # fmt: skip
def test_saves_follow_validation(tmp_path: Path, flags: dict[str, Any], expected: list[str]) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", save_top_k=-1)
    _trainer(tmp_path, [ckpt], **flags).fit(Scripted(), _loader(16), _loader(4))
    assert _names(tmp_path / "ckpt") == expected


# ------------------------------------------------------------------------------------------------ kills and resumes
# A child trains 8 epochs (2 steps each, "score" chosen so that the top 2 keep changing), resuming from "last", and
# SIGKILLs itself at a chosen point of a save: "writing" inside torch.save (the temporary file half written),
# "renamed" right after a file is renamed into place (after the top-k file and before last, or after last and
# before the deletions). "never" runs to the end; "random" is killed by the parent at a random moment.
_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import torchplug
    from torchplug.callbacks import ModelCheckpoint
    from torchplug.testing import BoringModel, regression_loader

    folder, when, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    SCORES = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 0.5, 7.0]
    calls = [0]

    def die_at_call():
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)

    if when == "writing":
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            if hasattr(f, "write") and calls[0] + 1 == count:
                f.write(b"half a checkpoint")
                f.flush()
            die_at_call()
            return real_save(obj, f, *args, **kwargs)
        torch.save = save
    elif when == "renamed":
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            die_at_call()
        os.replace = replace

    class Scored(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("score", SCORES[self.current_epoch])

    class Started(torchplug.Callback):
        def on_train_start(self, trainer, pl_module):
            print("started", trainer.global_step, flush=True)

    torchplug.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=folder, filename="{epoch}", monitor="score", save_top_k=2, save_last=True)
    trainer = torchplug.Trainer(accelerator="cpu", max_epochs=8, logger=False, callbacks=[Started(), checkpoint], num_sanity_val_steps=0,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder + "-root")
    trainer.fit(Scored(), regression_loader(16), regression_loader(8), ckpt_path="last")
    print("done", trainer.global_step, flush=True)
    """
)


def _run_child(folder: Path, when: str, count: int = 0) -> int:
    child = subprocess.Popen([sys.executable, "-W", "ignore", "-c", _KILLED_CHILD, str(folder), when, str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        if when == "random":
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("started"), line + (child.stderr.read() if child.stderr else "")
            time.sleep(random.Random(len(line) + count).uniform(0.0, 1.0))
            child.kill()
        child.wait(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(child.stderr.read() if child.stderr else child.returncode)
    return child.returncode


def _own_state(folder: Path) -> dict[str, Any] | None:
    """The ModelCheckpoint state a resume from last.ckpt restores."""
    if not (folder / "last.ckpt").exists():
        return None
    states = load_checkpoint(folder / "last.ckpt")["callbacks"]
    return next(value for key, value in states.items() if key.startswith("ModelCheckpoint"))


@pytest.mark.slow
def test_kill_loop_leaves_at_most_one_stale_file_and_resume_reconciles(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert _run_child(reference, "never") == 0

    folder = tmp_path / "killed"
    # after a top-k file (before last), inside the write of last, after last (before the deletion), at random, ...
    plan = [("renamed", 3), ("writing", 2), ("renamed", 4), ("random", 1), ("renamed", 1), ("writing", 3)]
    deadline = time.monotonic() + 600
    kills, stale_seen = 0, 0
    for when, count in plan:
        if time.monotonic() > deadline:
            break
        if _run_child(folder, when, count) == 0:
            break  # a late random kill can miss the run's end
        kills += 1
        visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
        for name in visible:  # never a corrupt checkpoint
            load_checkpoint(folder / name)
        state = _own_state(folder)
        if state is not None:
            referenced = {Path(p).name for p in state["best_k_models"]} | {"last.ckpt"}
            stale = sorted(set(visible) - referenced)
            assert len(stale) <= 1, (when, count, visible, referenced)
            stale_seen += len(stale)
    assert kills >= 4 and stale_seen >= 2  # the kills did land between the writes of a save

    assert _run_child(folder, "never") == 0
    # The folder holds what the uninterrupted run's holds: the same top 2, last, nothing stale, no -v duplicates,
    # no temporary files, and the same weights (resume is exact).
    assert _names(folder) == _names(reference) == ["epoch=3.ckpt", "epoch=6.ckpt", "last.ckpt"]
    state = _own_state(folder)
    assert state is not None and sorted(Path(p).name for p in state["best_k_models"]) == ["epoch=3.ckpt", "epoch=6.ckpt"]
    assert state["pending_removals"] == []
    for name in _names(reference):
        ours, theirs = load_checkpoint(folder / name), load_checkpoint(reference / name)
        assert ours["global_step"] == theirs["global_step"]
        for key, value in theirs["state_dict"].items():
            assert torch.equal(ours["state_dict"][key], value), (name, key)


def test_resuming_from_an_older_checkpoint_removes_nothing_and_names_the_later_files(tmp_path: Path) -> None:
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    folder = tmp_path / "ckpt"

    def checkpoint() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder, filename="{epoch}", monitor="score", save_top_k=3, save_last=True)

    _trainer(tmp_path, [checkpoint()], max_epochs=5).fit(Scripted(scores), _loader(), _loader(4))
    before = _names(folder)
    assert before == ["epoch=1.ckpt", "epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"]
    older = checkpoint()
    with pytest.warns(UserWarning, match=r"an older state than the checkpoints .*epoch=3.ckpt.*epoch=4.ckpt.* are left"):
        _trainer(tmp_path, [older], max_epochs=2).fit(Scripted(scores), _loader(), _loader(4), ckpt_path=folder / "epoch=1.ckpt")
    assert _names(folder) == before  # max_epochs=2 was reached at once: only last.ckpt was rewritten
    assert load_checkpoint(folder / "last.ckpt")["global_step"] == 4


def test_resume_removes_the_files_an_interrupted_save_left(tmp_path: Path) -> None:
    """What a kill between the writes of one save event leaves, made in one process: resume puts it right."""
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    folder = tmp_path / "ckpt"

    def checkpoint() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder, filename="{epoch}", monitor="score", save_top_k=2, save_last=True)

    _trainer(tmp_path, [checkpoint()], max_epochs=3).fit(Scripted(scores), _loader(), _loader(4))
    assert _names(folder) == ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"]
    stale_last = (folder / "last.ckpt").read_bytes()
    _trainer(tmp_path, [checkpoint()], max_epochs=4).fit(Scripted(scores), _loader(), _loader(4), ckpt_path="last")
    assert _names(folder) == ["epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]
    # As if killed after epoch=3.ckpt was written and before last.ckpt: last holds epoch 2's state, and the
    # evicted epoch=2.ckpt is still there; plus a killed write's temporary file.
    (folder / "last.ckpt").write_bytes(stale_last)
    shutil.copy(folder / "epoch=1.ckpt", folder / "epoch=2.ckpt")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / f".epoch=3.ckpt.tmp.{socket.gethostname().replace('.', '_')}.{int(dead.stdout)}.00ff00ff").write_bytes(b"x")
    resumed = checkpoint()
    _trainer(tmp_path, [resumed], max_epochs=4).fit(Scripted(scores), _loader(), _loader(4), ckpt_path="last")
    # epoch=3.ckpt (unknown to the resumed state) was removed and written again; no -v1 duplicate
    assert os.listdir(folder) and sorted(os.listdir(folder)) == ["epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]
    assert load_checkpoint(folder / "epoch=3.ckpt")["global_step"] == 8
    assert sorted(Path(p).name for p in resumed.best_k_models) == ["epoch=1.ckpt", "epoch=3.ckpt"]


def test_files_of_another_run_in_the_folder_are_never_removed(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    foreign = folder / "epoch=2.ckpt"  # matches the name pattern, but another run wrote it
    torchplug._checkpoint.atomic_save({"state_dict": {}, "global_step": 99}, foreign)

    def checkpoint() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder, filename="{epoch}", save_last=True)

    with pytest.warns(UserWarning, match="exists and is not empty"):
        _trainer(tmp_path, [checkpoint()], max_epochs=1).fit(Scripted(), _loader())
    _trainer(tmp_path, [checkpoint()], max_epochs=2).fit(Scripted(), _loader(), ckpt_path="last")
    assert _names(folder) == ["epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"]
    assert load_checkpoint(foreign)["global_step"] == 99


# ------------------------------------------------------------------------------------------------ Lightning's rules
class ValidationScores(Scripted):
    """Logs ``score`` only at the end of validation, from a list indexed by the validation run."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(scores)
        self.runs = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.log("score", self.scores[self.runs])
        self.runs += 1


@pytest.mark.parametrize(
    "trigger", [{"every_n_train_steps": 1}, {"train_time_interval": timedelta(0)}], ids=["steps", "time"]
)
def test_step_and_time_saves_wait_for_the_validation_metric(tmp_path: Path, trigger: dict[str, Any]) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", mode="max", filename="{step}-{score:.1f}", **trigger)
    _trainer(tmp_path, [ckpt], max_epochs=2, val_check_interval=0.5).fit(
        ValidationScores([0.1, 0.9, 0.3, 0.2]), _loader(16), _loader(4)
    )  # fmt: skip
    # every save happened after a validation, with its fresh value; the best is the second validation's
    assert float(ckpt.best_model_score) == pytest.approx(0.9)
    assert _names(tmp_path / "ckpt") == ["step=4-score=0.9.ckpt"]


def test_save_last_without_a_scheduled_save_writes_last_once_at_the_end(tmp_path: Path) -> None:
    saved: list[int] = []

    class Spy(ModelCheckpoint):
        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            saved.append(trainer.global_step)
            super()._save_checkpoint(trainer, filepath)

    ckpt = Spy(dirpath=tmp_path / "ckpt", every_n_epochs=0, save_top_k=0, save_last=True)
    _trainer(tmp_path, [ckpt], max_epochs=3).fit(Scripted(), _loader())
    assert saved == [6] and _names(tmp_path / "ckpt") == ["last.ckpt"]


def test_a_url_dirpath_is_refused_at_setup(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath="s3://bucket/run", save_last="link")
    with pytest.raises(MisconfigurationError, match=r"save_last='link'\) is only supported for local file paths, got dirpath='s3://bucket/run'"):
        _trainer(tmp_path, [ckpt], max_epochs=1).fit(Scripted(), _loader())


def test_constructor_annotations_are_types_for_cli_parsers() -> None:
    annotation = inspect.signature(ModelCheckpoint).parameters["save_last"].annotation
    assert annotation == (bool | Literal["link"] | None)
    assert not any(isinstance(p.annotation, str) for p in inspect.signature(ModelCheckpoint).parameters.values())


# ------------------------------------------------------------------------------------------------ directories
class DirectoryCheckpoints:
    """A plugin that writes each checkpoint as a directory (as a sharded strategy does): ``<path>/meta.ckpt``."""

    @torchplug.hookimpl
    def torchplug_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any], path: str) -> bool:
        if trainer.is_global_zero:
            if os.path.isdir(path) and not os.path.islink(path):
                import shutil

                shutil.rmtree(path)
            torchplug.atomic_save(checkpoint, Path(path) / "meta.ckpt")
        return True

    @torchplug.hookimpl
    def torchplug_load_checkpoint(self, trainer: Any, path: str) -> dict[str, Any]:
        return load_checkpoint(Path(path) / "meta.ckpt")


@pytest.mark.parametrize("save_last", [True, "link"])
def test_directory_checkpoints_top_k_last_and_resume(tmp_path: Path, save_last: Any) -> None:
    scores = [5.0, 3.0, 4.0, 1.0, 2.0]
    folder = tmp_path / "ckpt"
    ckpt = ModelCheckpoint(dirpath=folder, filename="{epoch}", monitor="score", save_top_k=2, save_last=save_last)
    trainer = _trainer(tmp_path, [ckpt], max_epochs=5, plugins=[DirectoryCheckpoints()])
    trainer.fit(Scripted(scores), _loader(), _loader(4))
    # directories that fell out of the top 2 were deleted, whole; last.ckpt was replaced each epoch
    assert _names(folder) == ["epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"]
    assert all((folder / name).is_dir() for name in _names(folder))
    assert (folder / "last.ckpt").is_symlink() == (save_last == "link")
    assert load_checkpoint(folder / "last.ckpt" / "meta.ckpt")["epoch"] == 4
    # a fresh run with the same callback finds "last" and "best" among directories in its folder ("last" means this
    # run's; best: from the callback state in their meta.ckpt)
    for which, expected in (("last", folder / "last.ckpt"), ("best", folder / "epoch=3.ckpt")):
        again = ModelCheckpoint(dirpath=folder, filename="{epoch}", monitor="score", save_top_k=2, save_last=save_last)
        resumed = _trainer(tmp_path, [again], max_epochs=5, plugins=[DirectoryCheckpoints()])
        resumed.fit(Scripted(scores), _loader(), _loader(4), ckpt_path=which)
        assert resumed.ckpt_path == str(expected)


def test_to_yaml_writes_the_top_k_scores(tmp_path: Path) -> None:
    import yaml

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="score", save_top_k=2, filename="{epoch}")
    _trainer(tmp_path, [ckpt], max_epochs=3).fit(Scripted([3.0, 1.0, 2.0]), _loader(), _loader(4))
    ckpt.to_yaml()
    written = yaml.safe_load((tmp_path / "ckpt" / "best_k_models.yaml").read_text())
    assert written == {str(tmp_path / "ckpt" / "epoch=1.ckpt"): 1.0, str(tmp_path / "ckpt" / "epoch=2.ckpt"): 2.0}
    with pytest.raises(ValueError, match="no dirpath yet"):
        ModelCheckpoint().to_yaml()


def test_time_save_waits_for_the_first_validation_epochs_away(tmp_path: Path) -> None:
    # Validation only every 2 epochs: the time-triggered saves of epoch 0 wait (the monitor was never logged) and
    # happen after the first validation, with its value.
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="score", mode="max", every_n_epochs=0,
        train_time_interval=timedelta(seconds=0), save_on_train_epoch_end=False,
    )  # fmt: skip
    _trainer(tmp_path, [ckpt], max_epochs=2, check_val_every_n_epoch=2).fit(
        Scripted([0.2, 0.6]), _loader(), _loader(4)
    )
    assert ckpt.best_model_score is not None and float(ckpt.best_model_score) == pytest.approx(0.6)
