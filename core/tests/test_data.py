"""How many batches a stage runs: an empty loader is said out loud, a limit that selects no batch is an error."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from torchplug import MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_data, regression_loader


def test_an_empty_training_loader_warns_and_trains_nothing() -> None:
    trainer = Trainer(**QUIET, max_epochs=1)
    with pytest.warns(UserWarning, match=r"the training dataloader is empty \(its length is 0\): there is nothing to train on"):
        trainer.fit(BoringModel(), DataLoader(regression_data(0), batch_size=4))
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("flag", "value", "minimum", "stage"),
    [("limit_train_batches", 0.01, "0.125", "fit"), ("limit_val_batches", 0.1, "0.125", "validate"),
     ("limit_test_batches", 0.05, "0.125", "test")],  # fmt: skip
)
def test_a_fraction_that_selects_no_batch_is_refused(flag: str, value: float, minimum: str, stage: str) -> None:
    trainer = Trainer(**QUIET, max_epochs=1, **{flag: value})
    model = BoringModel()
    run = {
        "fit": lambda: trainer.fit(model, regression_loader(64, 8)),
        "validate": lambda: trainer.validate(model, regression_loader(64, 8)),
        "test": lambda: trainer.test(model, regression_loader(64, 8)),
    }[stage]
    with pytest.raises(MisconfigurationError, match=rf"{flag}={value} selects no batch of the 8 .*Use at least {flag}={minimum}"):
        run()
    assert trainer.global_step == 0


def test_the_suggested_minimum_selects_a_batch() -> None:
    with pytest.raises(MisconfigurationError, match=r"Use at least limit_train_batches=0.1112") as error:
        Trainer(**QUIET, max_epochs=1, limit_train_batches=0.1).fit(BoringModel(), regression_loader(72, 8))  # 9 batches
    assert "0.1 * 9 < 1" in str(error.value)
    trainer = Trainer(**QUIET, max_epochs=1, limit_train_batches=0.1112)
    trainer.fit(BoringModel(), regression_loader(72, 8))
    assert trainer.global_step == 1


def test_zero_on_purpose_is_no_error() -> None:
    trainer = Trainer(**QUIET, max_epochs=1, limit_train_batches=0.0)
    trainer.fit(BoringModel(), regression_loader(64, 8))
    assert trainer.global_step == 0
