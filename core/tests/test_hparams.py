"""Hyperparameters: what save_hyperparameters keeps, what a checkpoint holds of them, and load_from_checkpoint.

Behaviour shared with Lightning is compared with Lightning itself in tests/lightning_oracle; these tests cover what
torchplug does on its own (checkpoints are plain data) and the edges an oracle run does not reach.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from torchplug import DataModule, MisconfigurationError, Module, Trainer
from torchplug.testing import BoringModel, regression_loader
from torchplug.utilities import AttributeDict

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)  # fmt: skip


class Config:
    """A user's own class, not plain data."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth

    def __repr__(self) -> str:
        return f"Config(depth={self.depth})"


class WithConfig(BoringModel):
    def __init__(self, config: Config, width: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = config


def _checkpoint(model: Module, tmp_path: Path) -> Path:
    trainer = Trainer(**QUIET, max_steps=1)
    trainer.fit(model, regression_loader(16, 8))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_attribute_dict_is_a_dict_with_attributes() -> None:
    hparams = AttributeDict(lr=0.1)
    hparams.depth = 3
    assert hparams == {"lr": 0.1, "depth": 3} and hparams.lr == 0.1 and hparams["depth"] == 3
    del hparams.depth
    with pytest.raises(AttributeError, match="no attribute 'depth'"):
        hparams.depth  # noqa: B018
    assert pickle.loads(pickle.dumps(hparams)) == hparams
    assert repr(AttributeDict(b=1, aa="x")) == '"aa": x\n"b":  1'


def test_an_object_hyperparameter_is_kept_as_its_repr_and_asked_for_when_loading(tmp_path: Path) -> None:
    model = WithConfig(Config(depth=5), width=4)
    assert model.hparams.config.depth == 5  # in the run: the object itself
    path = _checkpoint(model, tmp_path)
    raw = torch.load(path, weights_only=True)  # still plain data
    assert raw["hyper_parameters"] == {"features": 4, "lr": 0.1, "config": "Config(depth=5)", "width": 4}
    assert raw["hyper_parameters_as_repr"] == ["config"]
    with pytest.raises(MisconfigurationError, match=r"\['config'\].*repr.*load_from_checkpoint\(path, config=\.\.\.\)"):
        WithConfig.load_from_checkpoint(path)
    loaded = WithConfig.load_from_checkpoint(path, config=Config(depth=5))
    assert loaded.hparams.width == 4 and loaded.config.depth == 5
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_registered_safe_class_is_kept_in_the_checkpoint(tmp_path: Path) -> None:
    torch.serialization.add_safe_globals([Config])
    try:
        path = _checkpoint(WithConfig(Config(depth=6)), tmp_path)
        loaded = WithConfig.load_from_checkpoint(path)
        assert isinstance(loaded.hparams.config, Config) and loaded.hparams.config.depth == 6
        assert "hyper_parameters_as_repr" not in torch.load(path, weights_only=True)
    finally:
        torch.serialization.clear_safe_globals()


def test_load_from_checkpoint_options(tmp_path: Path) -> None:
    model = BoringModel(features=4, lr=0.3)
    path = _checkpoint(model, tmp_path)
    loaded = BoringModel.load_from_checkpoint(str(path), map_location=torch.device("cpu"), lr=0.5)
    assert loaded.hparams == {"features": 4, "lr": 0.5} and loaded.device.type == "cpu"
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        model.load_from_checkpoint(path)
    hparams_file = tmp_path / "hparams.yaml"
    hparams_file.write_text("features: 4\nlr: 0.7\n")
    assert BoringModel.load_from_checkpoint(path, hparams_file=hparams_file).hparams.lr == 0.7
    with pytest.raises(ValueError, match="hparams_file='x.txt': use a .yaml"):
        BoringModel.load_from_checkpoint(path, hparams_file="x.txt")


def test_strict_loading(tmp_path: Path) -> None:
    class Bigger(BoringModel):
        def __init__(self, features: int = 4, lr: float = 0.1) -> None:
            super().__init__(features, lr)
            self.extra = nn.Linear(2, 2)

    path = _checkpoint(BoringModel(), tmp_path)
    with pytest.raises(RuntimeError, match="Missing key"):
        Bigger.load_from_checkpoint(path)
    with pytest.warns(UserWarning, match=r"in the model state dict but not in the checkpoint: \['extra.weight'"):
        Bigger.load_from_checkpoint(path, strict=False)

    class Lenient(Bigger):
        def __init__(self, features: int = 4, lr: float = 0.1) -> None:
            super().__init__(features, lr)
            self.strict_loading = False

    with pytest.warns(UserWarning, match="not in the checkpoint"):
        Lenient.load_from_checkpoint(path)
    with pytest.raises(ValueError, match="in conflict with `Lenient.strict_loading=False`"):
        Lenient.load_from_checkpoint(path, strict=True)


def test_datamodule_hyperparameters_travel_in_the_checkpoint(tmp_path: Path) -> None:
    class Data(DataModule):
        def __init__(self, batch_size: int = 8, root: str = "data") -> None:
            super().__init__()
            self.save_hyperparameters(ignore=["root"])
            self.loaded = None

        def train_dataloader(self):
            return regression_loader(16, self.hparams.batch_size)

        def state_dict(self):
            return {"seen": 3}

        def load_state_dict(self, state_dict):
            self.loaded = state_dict

    trainer = Trainer(**QUIET, max_steps=1)
    trainer.fit(BoringModel(), datamodule=Data(batch_size=4))
    trainer.save_checkpoint(tmp_path / "dm.ckpt")
    raw = torch.load(tmp_path / "dm.ckpt", weights_only=True)
    assert raw["datamodule_hyper_parameters"] == {"batch_size": 4}
    assert raw["datamodule_hparams_name"] == "kwargs"
    data = Data.load_from_checkpoint(tmp_path / "dm.ckpt")
    assert data.hparams == {"batch_size": 4} and data.loaded == {"seen": 3}


def test_save_hyperparameters_forms_and_errors() -> None:
    class Chosen(Module):
        def __init__(self, a: int = 1, b: int = 2, *args: int, c: int = 3, **kwargs: int) -> None:
            super().__init__()
            self.save_hyperparameters("a", "c")

    assert Chosen(a=5, c=6).hparams == {"a": 5, "c": 6}

    class FromNamespace(Module):
        def __init__(self, config: argparse.Namespace) -> None:
            super().__init__()
            self.save_hyperparameters(config)

    model = FromNamespace(argparse.Namespace(lr=0.1))
    assert type(model.hparams) is AttributeDict and model.hparams.lr == 0.1 and model._hparams_name == "config"

    class Missing(Module):
        def __init__(self, a: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters("a", "nope")

    with pytest.raises(MisconfigurationError, match=r"\['nope'\] is not an argument of Missing.__init__"):
        Missing()

    class Primitive(Module):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters(5)

    with pytest.raises(ValueError, match="Primitives"):
        Primitive()

    class Unpicklable(BoringModel):
        def __init__(self, fn=lambda x: x) -> None:
            super().__init__()
            self.save_hyperparameters()

    model = Unpicklable()
    with pytest.warns(UserWarning, match="'fn' removed from hparams because it cannot be pickled"):
        Trainer(**QUIET, max_steps=1).fit(model, regression_loader(16, 8))
    assert "fn" not in model.hparams
