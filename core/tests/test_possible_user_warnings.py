"""``PossibleUserWarning``: Lightning's warnings about what is often, not always, a mistake, with its words and
class, and ``disable_possible_user_warnings`` to silence them."""

import os
import warnings

import pytest
from torch.utils.data import DataLoader

from torchplug import Callback, Trainer
from torchplug.testing import QUIET, BoringModel, regression_data, regression_loader
from torchplug.utilities import PossibleUserWarning, disable_possible_user_warnings


class _StopAtOnce(Callback):
    def on_train_batch_end(self, trainer, *args):
        trainer.should_stop = True


def _fit_without_max_epochs():
    Trainer(accelerator="cpu", **QUIET, callbacks=[_StopAtOnce()]).fit(BoringModel(), regression_loader(8, 8))


def _messages(record, category=PossibleUserWarning):
    return [str(w.message) for w in record if issubclass(w.category, category)]


def test_possible_user_warnings_are_user_warnings():
    assert issubclass(PossibleUserWarning, UserWarning)
    with pytest.warns(PossibleUserWarning, match="`max_epochs` was not set. Setting it to 1000 epochs"):
        _fit_without_max_epochs()


def test_disable_possible_user_warnings(recwarn):
    with warnings.catch_warnings():
        disable_possible_user_warnings()
        _fit_without_max_epochs()
        assert _messages(recwarn) == []
    with warnings.catch_warnings():
        disable_possible_user_warnings(module="some.other.package")
        _fit_without_max_epochs()
        assert any("max_epochs" in m for m in _messages(recwarn))


def test_shuffled_evaluation_loader(recwarn):
    shuffled = DataLoader(regression_data(16), batch_size=8, shuffle=True)
    Trainer(accelerator="cpu", **QUIET).validate(BoringModel(), shuffled, verbose=False)
    assert _messages(recwarn) == [
        "Your `val_dataloader`'s sampler has shuffling enabled, it is strongly recommended that you turn shuffling "
        "off for val/test dataloaders."
    ]
    recwarn.clear()
    Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(BoringModel(), shuffled)  # training may shuffle
    assert not any("shuffling enabled" in m for m in _messages(recwarn))


def test_few_workers_on_a_machine_with_many_cpus(monkeypatch, recwarn):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    Trainer(accelerator="cpu", **QUIET).test(BoringModel(), regression_loader(8, 8), verbose=False)
    assert _messages(recwarn) == [
        "The 'test_dataloader' does not have many workers which may be a bottleneck. Consider increasing the value "
        "of the `num_workers` argument` to `num_workers=7` in the `DataLoader` to improve performance."
    ]
    recwarn.clear()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)  # one CPU to spare: no advice
    Trainer(accelerator="cpu", **QUIET).test(BoringModel(), regression_loader(8, 8), verbose=False)
    assert _messages(recwarn) == []


def test_pinned_persistent_workers_with_reloading(recwarn):
    loader = DataLoader(regression_data(8), batch_size=8, num_workers=1, persistent_workers=True, pin_memory=True)
    Trainer(accelerator="cpu", **QUIET, max_epochs=1, reload_dataloaders_every_n_epochs=1).fit(BoringModel(), loader)
    assert any("pin_memory=True`, `persistent_workers=True`) and `Trainer(" in m for m in _messages(recwarn))
