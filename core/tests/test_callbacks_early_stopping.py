"""EarlyStopping: stops after exactly ``patience`` checks without improvement, thresholds, state across resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import MisconfigurationError
from torchplug._checkpoint import load_checkpoint
from torchplug.callbacks import EarlyStopping, EarlyStoppingReason, ModelCheckpoint


class Scripted(torchplug.Module):
    """Logs ``score`` = the next value of ``scores`` at every validation run, so each check's value is known."""

    def __init__(self, scores: list[float], start: int = 0) -> None:
        super().__init__()
        self.scores, self.calls = scores, start
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", torch.tensor(self.scores[self.calls]))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.calls += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path: Path, callbacks: list[Any], scores: list[float], n_train: int = 8, **kwargs: Any) -> Any:
    options: dict[str, Any] = dict(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, max_epochs=20,
    )  # fmt: skip
    options.update(kwargs)
    trainer = torchplug.Trainer(accelerator="cpu", callbacks=callbacks, **options)
    model = Scripted(scores)
    loader = DataLoader(TensorDataset(torch.randn(n_train, 2)), batch_size=4)
    trainer.fit(model, loader, DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4))
    return trainer, model


@pytest.mark.parametrize("patience", [1, 3])
def test_stops_after_exactly_patience_checks(tmp_path: Path, patience: int) -> None:
    # Improves until check 2 (value 4.0), then never again.
    scores = [5.0, 4.5, 4.0] + [4.0 + 0.1 * i for i in range(1, 20)]
    stopper = EarlyStopping(monitor="score", patience=patience)
    trainer, model = _fit(tmp_path, [stopper], scores)
    assert model.calls == 3 + patience  # checks 0, 1, 2 improve; then `patience` checks without improvement
    assert trainer.current_epoch == 3 + patience  # one check per epoch; epochs 0..2+patience ran
    assert stopper.stopped_epoch == 2 + patience
    assert stopper.wait_count == patience
    assert float(stopper.best_score) == 4.0


def test_min_delta_and_mode_max(tmp_path: Path) -> None:
    # Gains of 0.05 are below min_delta=0.1, so they do not count as improvements.
    stopper = EarlyStopping(monitor="score", mode="max", min_delta=0.1, patience=2)
    trainer, model = _fit(tmp_path, [stopper], [1.0, 1.05, 1.3, 1.35, 1.4, 9.0])
    assert model.calls == 5 and float(stopper.best_score) == pytest.approx(1.3)


@pytest.mark.parametrize(
    ("kwargs", "scores", "checks", "reason", "why"),
    [
        ({}, [3.0, 2.0, math.nan, 1.0], 3, "is not finite", EarlyStoppingReason.NON_FINITE_METRIC),
        ({"stopping_threshold": 0.5}, [3.0, 2.0, 0.4, 0.3], 3, "Stopping threshold", EarlyStoppingReason.STOPPING_THRESHOLD),
        ({"divergence_threshold": 10.0}, [3.0, 20.0, 1.0], 2, "Divergence threshold", EarlyStoppingReason.DIVERGENCE_THRESHOLD),
        ({"patience": 2}, [3.0, 3.5, 4.0, 1.0], 3, "did not improve", EarlyStoppingReason.PATIENCE_EXHAUSTED),
    ],
)  # fmt: skip
def test_immediate_stops(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kwargs: dict[str, Any],
    scores: list[float],
    checks: int,
    reason: str,
    why: EarlyStoppingReason,
) -> None:
    stopper = EarlyStopping(monitor="score", **{"patience": 100, "verbose": True, **kwargs})
    trainer, model = _fit(tmp_path, [stopper], scores)
    assert model.calls == checks and trainer.should_stop
    assert reason in capsys.readouterr().out
    assert stopper.stopping_reason is why and reason in stopper.stopping_reason_message
    # the reason is part of the callback's state, so a resumed run still knows why the first one stopped
    restored = EarlyStopping(monitor="score")
    restored.load_state_dict(stopper.state_dict())
    assert (restored.stopping_reason, restored.stopping_reason_message) == (
        why,
        stopper.stopping_reason_message,
    )


def test_no_stop_no_reason(tmp_path: Path) -> None:
    stopper = EarlyStopping(monitor="score", patience=5)
    _fit(tmp_path, [stopper], [3.0, 2.0, 1.0], max_epochs=3)
    assert (
        stopper.stopping_reason is EarlyStoppingReason.NOT_STOPPED and stopper.stopping_reason_message is None
    )
    old = {k: v for k, v in stopper.state_dict().items() if not k.startswith("stopping_reason")}
    stopper.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
    stopper.load_state_dict(old)  # a checkpoint from before the reason was saved
    assert stopper.stopping_reason is EarlyStoppingReason.NOT_STOPPED


def test_min_epochs_is_honoured(tmp_path: Path) -> None:
    stopper = EarlyStopping(monitor="score", patience=1)
    trainer, model = _fit(tmp_path, [stopper], [1.0] * 20, min_epochs=5)
    # It asks to stop from the second check on (epoch 1), and the trainer runs the minimum of 5 epochs anyway.
    assert trainer.current_epoch == 5 and model.calls == 5
    assert stopper.wait_count == 4 and stopper.stopped_epoch == 4


def test_checks_after_each_validation_within_an_epoch(tmp_path: Path) -> None:
    stopper = EarlyStopping(monitor="score", patience=2)
    # 4 batches per epoch and validation every 2: checks at steps 2 (best), 4, 6 -> stop in the middle of epoch 1.
    trainer, model = _fit(tmp_path, [stopper], [1.0] * 20, n_train=16, val_check_interval=2)
    assert trainer.global_step == 6 and stopper.stopped_epoch == 1


def test_missing_monitor(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationError, match=r"monitor='val_loss'.*\['score'\]"):
        _fit(tmp_path, [EarlyStopping(monitor="val_loss")], [1.0] * 20)
    trainer, model = _fit(
        tmp_path, [EarlyStopping(monitor="val_loss", strict=False)], [1.0] * 20, max_epochs=2
    )
    assert trainer.current_epoch == 2


def test_bad_arguments() -> None:
    with pytest.raises(MisconfigurationError, match="mode='avg'"):
        EarlyStopping(monitor="x", mode="avg")
    with pytest.raises(MisconfigurationError, match="patience=-1"):
        EarlyStopping(monitor="x", patience=-1)
    with pytest.raises(MisconfigurationError, match="min_delta=-0.1"):
        EarlyStopping(monitor="x", min_delta=-0.1)


def test_state_survives_a_resume(tmp_path: Path) -> None:
    scores = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    stopper = EarlyStopping(monitor="score", patience=3)
    _fit(tmp_path, [stopper, ckpt], scores, max_epochs=3, enable_checkpointing=True)
    assert stopper.wait_count == 2 and not stopper.stopped_epoch

    state = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["callbacks"][stopper.state_key]
    assert state == {
        "wait_count": 2, "stopped_epoch": 0, "best_score": torch.tensor(5.0), "patience": 3,
        "stopping_reason": EarlyStoppingReason.NOT_STOPPED.value, "stopping_reason_message": None,
    }  # fmt: skip
    fresh = EarlyStopping(monitor="score", patience=3)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == stopper.state_dict()

    # Resumed, the third check without improvement (epoch 3) stops the run; a fresh count would need three more.
    resumed = EarlyStopping(monitor="score", patience=3)
    trainer = torchplug.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, max_epochs=20,
        callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )  # fmt: skip
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer.fit(Scripted(scores, start=3), loader, loader, ckpt_path="last")
    assert resumed.stopped_epoch == 3 and trainer.current_epoch == 4
