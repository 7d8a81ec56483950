"""Which checkpoint ``ckpt_path`` means ("last", "best", a path, a directory), and state a checkpoint cannot hold
found at fit start."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import torchplug
from torchplug import Callback, MisconfigurationError, Trainer
from torchplug._checkpoint import load_checkpoint
from torchplug.callbacks import ModelCheckpoint
from torchplug.loggers import CSVLogger
from torchplug.testing import BoringModel, regression_loader

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def _fit(root: Path, ckpt_path: Any = None, lr: float = 0.1, **kwargs: Any) -> tuple[Trainer, BoringModel]:
    kwargs.setdefault("callbacks", [ModelCheckpoint(save_last=True)])
    trainer = Trainer(accelerator="cpu", default_root_dir=root, max_epochs=kwargs.pop("max_epochs", 1), **QUIET, **kwargs)
    model = BoringModel(lr=lr)
    trainer.fit(model, regression_loader(16), regression_loader(8), ckpt_path=ckpt_path)
    return trainer, model


# ------------------------------------------------------------------------------------------------ "last"
def test_last_never_means_another_runs_checkpoint(tmp_path: Path) -> None:
    # Two runs with the default logger: version_0 (lr=0.1) and version_1 (lr=0.02), each with a last.ckpt.
    _fit(tmp_path, lr=0.1)
    _fit(tmp_path, lr=0.02)
    lasts = sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    assert len(lasts) == 2

    # A new process would log to version_2, whose folder holds nothing: refused, the other runs listed.
    with pytest.raises(MisconfigurationError) as error:
        _fit(tmp_path, ckpt_path="last", max_epochs=2)
    message = str(error.value)
    assert "ckpt_path='last'" in message and "never means another run's" in message
    assert all(str(path) in message for path in lasts)
    assert "global step 2" in message

    # Naming the version to continue resumes exactly that run's last checkpoint.
    trainer, _ = _fit(tmp_path, ckpt_path="last", max_epochs=2, logger=CSVLogger(tmp_path, version=0))
    assert trainer.ckpt_path == str(lasts[0])
    assert load_checkpoint(lasts[0])["hyper_parameters"]["lr"] == 0.1


def test_last_with_nothing_anywhere_warns_and_starts_fresh(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="No checkpoint will be loaded"):
        trainer, _ = _fit(tmp_path, ckpt_path="last", logger=False)
    assert trainer.ckpt_path is None and trainer.global_step == 2


def test_last_that_is_ambiguous_lists_the_candidates(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    # Two separate runs into one folder: the second one's last checkpoint is last-v1.ckpt.
    for _ in range(2):
        _fit(tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)])
    assert sorted(p.name for p in folder.glob("last*")) == ["last-v1.ckpt", "last.ckpt"]
    with pytest.raises(MisconfigurationError, match=r"ckpt_path='last'\) is ambiguous") as error:
        _fit(tmp_path, ckpt_path="last", logger=False, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)])
    assert str(folder / "last.ckpt") in str(error.value) and str(folder / "last-v1.ckpt") in str(error.value)


def test_last_of_two_callbacks_of_this_run_is_the_newest(tmp_path: Path) -> None:
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path / "a", save_last=True),
        ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_last=True),
    ]
    _fit(tmp_path, logger=False, callbacks=callbacks)
    os.utime(tmp_path / "a" / "last.ckpt", (1, 1))  # b's is the newer one
    fresh = [ModelCheckpoint(dirpath=tmp_path / "a", save_last=True),
             ModelCheckpoint(dirpath=tmp_path / "b", monitor="val_loss", save_last=True)]  # fmt: skip
    trainer, _ = _fit(tmp_path, ckpt_path="last", logger=False, callbacks=fresh, max_epochs=2)
    assert trainer.ckpt_path == str(tmp_path / "b" / "last.ckpt")


# ------------------------------------------------------------------------------------------------ "best"
def test_best_in_a_new_process_comes_from_the_callbacks_own_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    first, _ = _fit(tmp_path, logger=False, max_epochs=3,
                    callbacks=[ModelCheckpoint(dirpath=folder, monitor="val_loss", save_top_k=2)])  # fmt: skip
    best = first.checkpoint_callback.best_model_path
    fresh = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=folder, monitor="val_loss", save_top_k=2)], **QUIET)  # fmt: skip
    fresh.validate(BoringModel(), regression_loader(8), ckpt_path="best")
    assert fresh.ckpt_path == best


def test_best_without_a_checkpoint_callback_is_refused(tmp_path: Path) -> None:
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_checkpointing=False, **QUIET)
    with pytest.raises(MisconfigurationError, match=r"test\(ckpt_path='best'\): `ModelCheckpoint` is not configured"):
        trainer.test(BoringModel(), regression_loader(8), ckpt_path="best")


def test_best_with_save_top_k_0_is_refused(tmp_path: Path) -> None:
    trainer, model = _fit(tmp_path, logger=False, callbacks=[ModelCheckpoint(save_top_k=0)])
    with pytest.raises(MisconfigurationError, match="is not configured to save the best"):
        trainer.validate(model, regression_loader(8), ckpt_path="best")


# ------------------------------------------------------------------------------------------------ paths
def test_missing_path_is_a_file_not_found_error_naming_it(tmp_path: Path) -> None:
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, **QUIET)
    with pytest.raises(FileNotFoundError, match=r"fit\(ckpt_path='lats'\) does not exist; did you mean ckpt_path='last'"):
        trainer.fit(BoringModel(), regression_loader(8), ckpt_path="lats")
    with pytest.raises(MisconfigurationError, match=r"fit\(ckpt_path=3\): expected the path of a checkpoint, 'last' or 'best'"):
        trainer.fit(BoringModel(), regression_loader(8), ckpt_path=3)


def test_directory_that_is_not_a_checkpoint_names_what_is_in_it(tmp_path: Path) -> None:
    _fit(tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}")])
    (tmp_path / "ckpt" / "notes.txt").write_text("x")
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, **QUIET)
    with pytest.raises(MisconfigurationError) as error:
        trainer.fit(BoringModel(), regression_loader(8), ckpt_path=tmp_path / "ckpt")
    message = str(error.value)
    assert f"{str(tmp_path / 'ckpt')!r} is a directory, not a checkpoint" in message
    assert "epoch=0.ckpt, notes.txt" in message
    assert f"ckpt_path={str(tmp_path / 'ckpt' / 'epoch=0.ckpt')!r}" in message


class DirectoryCheckpoints:
    """Writes each checkpoint as a directory holding ``meta.ckpt`` (a stand-in for a sharded strategy's layout,
    which needs several processes and ``torch.distributed.checkpoint``; the core must treat both alike)."""

    @torchplug.hookimpl
    def torchplug_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any], path: str) -> bool:
        if trainer.is_global_zero:
            shutil.rmtree(path, ignore_errors=True)
            torchplug._checkpoint.atomic_save(checkpoint, Path(path) / "meta.ckpt")
        return True

    @torchplug.hookimpl
    def torchplug_load_checkpoint(self, trainer: Any, path: str) -> dict[str, Any]:
        return load_checkpoint(Path(path) / "meta.ckpt")


def test_directory_checkpoint_loads_with_its_plugin_and_is_named_without(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    _fit(tmp_path, logger=False, plugins=[DirectoryCheckpoints()],
         callbacks=[ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1, save_last=True)])  # fmt: skip
    assert (folder / "last.ckpt" / "meta.ckpt").is_file()
    # "last" and a directory path both resume through the plugin that reads directories
    for ckpt_path in ("last", folder / "epoch=0.ckpt"):
        trainer, _ = _fit(tmp_path, ckpt_path=ckpt_path, logger=False, max_epochs=2, plugins=[DirectoryCheckpoints()],
                          callbacks=[ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1, save_last=True)])  # fmt: skip
        assert trainer.global_step == 4
    # without it, the directory is recognised as a checkpoint the strategy of this run cannot read
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, **QUIET)
    with pytest.raises(MisconfigurationError, match="is a directory checkpoint written by the strategy 'single_device'"):
        trainer.validate(BoringModel(), regression_loader(8), ckpt_path=folder / "epoch=0.ckpt")


def test_weights_only_resume_advice_names_functions_that_exist(tmp_path: Path) -> None:
    trainer, _ = _fit(tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path / "w", save_weights_only=True)])
    path = trainer.checkpoint_callback.best_model_path
    with pytest.raises(MisconfigurationError, match="weights_only=True and cannot resume") as error:
        _fit(tmp_path, ckpt_path=path, logger=False, max_epochs=2, callbacks=[])
    calls = re.findall(r"(torchplug\.\w+)\(", str(error.value))
    assert calls == ["torchplug.load_checkpoint"]
    assert all(callable(eval(name, {"torchplug": torchplug})) for name in calls)
    advice = re.search(r"with (model\.load_state_dict\(.*\]\))", str(error.value)).group(1)  # type: ignore[union-attr]
    model = BoringModel()
    eval(advice, {"torchplug": torchplug, "model": model})  # the advice runs as written


# ------------------------------------------------------------------------------------------------ dry run
class Opaque:
    pass


class AddsAnObject(Callback):
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["extra"] = {"thing": Opaque()}


class StateWithAnObject(Callback):
    def state_dict(self) -> dict[str, Any]:
        return {"when": Opaque()}


class Counts(BoringModel):
    steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        Counts.steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("callback", "where"),
    [
        (AddsAnObject(), r"checkpoint\['extra'\]\['thing'\] is a test_state\.Opaque.*put there by AddsAnObject\.on_save_checkpoint"),
        (StateWithAnObject(), r"checkpoint\['callbacks'\]\['StateWithAnObject'\]\['when'\] is a test_state\.Opaque"),
    ],
)
def test_state_a_checkpoint_cannot_hold_is_found_at_fit_start(tmp_path: Path, callback: Callback, where: str) -> None:
    Counts.steps = 0
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, max_epochs=3, callbacks=[callback], **QUIET)
    with pytest.raises(TypeError, match=where) as error:
        trainer.fit(Counts(), regression_loader(16))
    assert "Found at fit start" in str(error.value)
    assert Counts.steps == 0  # nothing trained
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing written


class AssertsAtSave(BoringModel):
    """Checks the run's state when a checkpoint is made, as Lightning users' ``on_save_checkpoint`` often do."""

    saved_at: list[int] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.trainer.global_step > 0
        AssertsAtSave.saved_at.append(self.trainer.global_step)


def test_a_save_hook_that_cannot_run_before_training_does_not_stop_the_dry_run(tmp_path: Path) -> None:
    AssertsAtSave.saved_at = []
    trainer = Trainer(accelerator="cpu", default_root_dir=tmp_path, logger=False, max_epochs=2, **QUIET)
    trainer.fit(AssertsAtSave(), regression_loader(16))
    assert AssertsAtSave.saved_at == [2, 4]
