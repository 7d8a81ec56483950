"""Where data comes from and how it is read: CombinedLoader's modes, several loaders, checks, samplers, iterators;
how many batches a stage runs (an empty loader is said out loud, a limit that selects no batch is an error)."""

import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler

from torchplug import DataModule, MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_data, regression_loader
from torchplug.utilities import CombinedLoader


def test_combined_loader_modes_as_lightnings():
    data = {"a": [0, 1, 2], "b": [3, 4]}
    assert list(CombinedLoader(data, "max_size_cycle")) == [({"a": 0, "b": 3}, 0, 0), ({"a": 1, "b": 4}, 1, 0),
                                                            ({"a": 2, "b": 3}, 2, 0)]  # fmt: skip
    assert list(CombinedLoader(data, "min_size")) == [({"a": 0, "b": 3}, 0, 0), ({"a": 1, "b": 4}, 1, 0)]
    assert list(CombinedLoader(data, "max_size"))[-1] == ({"a": 2, "b": None}, 2, 0)
    assert list(CombinedLoader(data, "sequential")) == [(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 0, 1), (4, 1, 1)]
    assert [len(CombinedLoader(data, m)) for m in ("max_size_cycle", "min_size", "max_size", "sequential")] == [3, 2,
                                                                                                                3, 5]  # fmt: skip
    assert CombinedLoader([0, 1, 2]).flattened == [[0, 1, 2]]  # numbers: one iterable, not three
    assert CombinedLoader([[0, 1], [2]]).flattened == [[0, 1], [2]]
    with pytest.raises(ValueError, match="Unsupported mode 'foo'"):
        CombinedLoader(data, "foo")


class Several(BoringModel):
    def __init__(self):
        super().__init__()
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", sorted(batch)))
        return super().training_step(batch["a"], batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(("val", batch_idx, dataloader_idx))
        super().validation_step(batch, batch_idx)


def test_several_training_and_evaluation_loaders():
    model = Several()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, {"a": regression_loader(32, 8), "b": regression_loader(16, 8)},
                [regression_loader(16, 8), regression_loader(8, 8)])  # fmt: skip
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2, 1]  # max_size_cycle
    assert model.seen.count(("train", ["a", "b"])) == 4
    assert [s for s in model.seen if s[0] == "val"] == [("val", 0, 0), ("val", 1, 0), ("val", 0, 1)]
    assert set(trainer.callback_metrics) == {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1", "train_loss"}
    assert isinstance(trainer.val_dataloaders, list) and set(trainer.train_dataloader) == {"a", "b"}
    with pytest.raises(MisconfigurationError, match="`FitLoop` does not support"):
        Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(Several(), CombinedLoader([regression_loader(8, 8)], "sequential"))


def test_data_checks_name_their_origin():
    class NoData(BoringModel):
        def train_dataloader(self):
            return object()

    with pytest.raises(TypeError, match=r"invalid dataloader was passed to `Trainer.test\(dataloaders"):
        Trainer(accelerator="cpu", **QUIET).test(BoringModel(), dataloaders=object())
    with pytest.raises(TypeError, match=r"invalid dataloader was returned from `NoData.train_dataloader\(\)"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(NoData())
    with pytest.raises(TypeError, match=r"found None"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1).fit(BoringModel())

    class RequiresIndex(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx):
            pass

    with pytest.raises(RuntimeError, match="have included `dataloader_idx` in `RequiresIndex.validation_step"):
        Trainer(accelerator="cpu", **QUIET).validate(RequiresIndex(), regression_loader(8, 8))

    class NoIndex(BoringModel):
        def validation_step(self, batch, batch_idx):
            pass

    with pytest.raises(RuntimeError, match="no `dataloader_idx` argument in `NoIndex.validation_step"):
        Trainer(accelerator="cpu", **QUIET).validate(NoIndex(), [regression_loader(8, 8), regression_loader(8, 8)])


def test_a_datamodule_passed_positionally_and_its_transfer_hooks():
    class Data(DataModule):
        def __init__(self):
            super().__init__()
            self.transferred = 0

        def train_dataloader(self):
            return regression_loader(16, 8)

        def on_before_batch_transfer(self, batch, dataloader_idx):
            self.transferred += 1
            return batch

    data = Data()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    trainer.fit(BoringModel(), data)
    assert trainer.datamodule is data and data.transferred == 2


def test_samplers_hear_each_epoch_for_training_and_evaluation():
    calls = []

    class Sampler(SequentialSampler):
        def __init__(self, source, name):
            super().__init__(source)
            self.name = name

        def set_epoch(self, epoch):
            calls.append((self.name, epoch))

    data = regression_data(16)
    Trainer(accelerator="cpu", **QUIET, max_epochs=2, num_sanity_val_steps=0).fit(
        BoringModel(), DataLoader(data, sampler=Sampler(data, "train"), batch_size=8),
        DataLoader(data, sampler=Sampler(data, "val"), batch_size=8),
    )  # fmt: skip
    assert calls == [("train", 0), ("val", 0), ("train", 1), ("val", 1)]


def test_steps_that_read_the_iterator_themselves():
    class Reads(BoringModel):
        def __init__(self):
            super().__init__()
            self.calls = []

        def training_step(self, dataloader_iter):
            batch, batch_idx, _ = next(dataloader_iter)
            second, second_idx, _ = next(dataloader_iter)
            self.calls.append((batch_idx, second_idx))
            return super().training_step(second, second_idx)

        def validation_step(self, dataloader_iter):
            batch, batch_idx, dataloader_idx = next(dataloader_iter)
            self.calls.append(("val", batch_idx, dataloader_idx))

    model = Reads()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(32, 8), regression_loader(16, 8))
    assert model.calls == [(0, 1), (2, 3), ("val", 0, 0), ("val", 1, 0)] and trainer.global_step == 2


def test_return_predictions_false_keeps_nothing():
    trainer = Trainer(accelerator="cpu", **QUIET)
    assert trainer.predict(BoringModel(), regression_loader(16, 8), return_predictions=False) is None
    predictions = trainer.predict(BoringModel(), regression_loader(16, 8))
    assert [tuple(p.shape) for p in predictions] == [(8, 1), (8, 1)] and predictions[0].device == torch.device("cpu")


def test_an_empty_training_loader_warns_and_trains_nothing() -> None:
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1)
    with pytest.warns(UserWarning, match=r"the training dataloader is empty \(its length is 0\): there is nothing to train on"):
        trainer.fit(BoringModel(), DataLoader(regression_data(0), batch_size=4))
    assert trainer.global_step == 0


@pytest.mark.parametrize(
    ("flag", "value", "minimum", "stage"),
    [("limit_train_batches", 0.01, "0.125", "fit"), ("limit_val_batches", 0.1, "0.125", "validate"),
     ("limit_test_batches", 0.05, "0.125", "test")],  # fmt: skip
)
def test_a_fraction_that_selects_no_batch_is_refused(flag: str, value: float, minimum: str, stage: str) -> None:
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, **{flag: value})
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
        Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=0.1).fit(BoringModel(), regression_loader(72, 8))  # 9 batches
    assert "0.1 * 9 < 1" in str(error.value)
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=0.1112)
    trainer.fit(BoringModel(), regression_loader(72, 8))
    assert trainer.global_step == 1


def test_zero_on_purpose_is_no_error() -> None:
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, limit_train_batches=0.0)
    trainer.fit(BoringModel(), regression_loader(64, 8))
    assert trainer.global_step == 0
