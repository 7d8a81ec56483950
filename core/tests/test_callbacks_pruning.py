"""ModelPruning: masks from torch.nn.utils.prune applied at epoch ends, made permanent in checkpoints and at the end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchplug
from torchplug import MisconfigurationError
from torchplug._checkpoint import load_checkpoint
from torchplug.callbacks import ModelCheckpoint, ModelPruning
from torchplug.testing import QUIET, BoringModel, regression_loader

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step`")


class TwoLayers(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _fit(tmp_path: Path, callbacks: list[Any], model: Any, **kwargs: Any) -> torchplug.Trainer:
    options = {"max_epochs": 1, "limit_val_batches": 0, **QUIET, **kwargs}
    trainer = torchplug.Trainer(accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, **options)
    trainer.fit(model, regression_loader(n=16, batch_size=8))
    return trainer


def test_local_pruning_masks_each_parameter_and_is_made_permanent(tmp_path: Path) -> None:
    model = TwoLayers()
    first, second = model.layer[0], model.layer[2]
    pruning = ModelPruning(
        "l1_unstructured", amount=0.5, use_global_unstructured=False, parameter_names=["weight"]
    )
    _fit(tmp_path, [pruning], model)
    assert int((first.weight == 0).sum()) == 16 and int((second.weight == 0).sum()) == 4
    assert not hasattr(first, "weight_orig") and isinstance(
        first.weight, nn.Parameter
    )  # permanent at the end
    assert not (first.bias == 0).any()


def test_global_pruning_with_a_count_and_a_schedule(tmp_path: Path) -> None:
    model = TwoLayers()
    pruning = ModelPruning(
        "l1_unstructured", amount=lambda epoch: 10, apply_pruning=lambda epoch: epoch in (0, 2),
        make_pruning_permanent=False, use_lottery_ticket_hypothesis=False,
    )  # fmt: skip
    _fit(tmp_path, [pruning], model, max_epochs=3)
    masks = [m for name, m in model.named_buffers() if name.endswith("_mask")]
    assert len(masks) == 4  # two weights and two biases
    assert sum(int((m == 0).sum()) for m in masks) == 20  # 10 at epoch 0, 10 more at epoch 2, none at epoch 1
    assert hasattr(model.layer[0], "weight_orig")


def test_structured_pruning_zeroes_whole_rows(tmp_path: Path) -> None:
    model = TwoLayers()
    pruning = ModelPruning(
        "ln_structured", amount=0.5, pruning_dim=0, pruning_norm=2, use_global_unstructured=False,
        parameters_to_prune=[(model.layer[0], "weight")],
    )  # fmt: skip
    _fit(tmp_path, [pruning], model)
    zero_rows = (model.layer[0].weight == 0).all(dim=1)
    assert int(zero_rows.sum()) == 4 and int((model.layer[0].weight == 0).sum()) == 16


def test_lottery_ticket_resets_surviving_weights(tmp_path: Path) -> None:
    model = TwoLayers()
    initial = model.layer[0].weight.detach().clone()
    pruning = ModelPruning(
        "l1_unstructured", amount=0.25, parameters_to_prune=[(model.layer[0], "weight")],
        make_pruning_permanent=False, use_lottery_ticket_hypothesis=True,
    )  # fmt: skip
    _fit(tmp_path, [pruning], model)
    layer = model.layer[0]
    torch.testing.assert_close(layer.weight_orig.detach(), initial)
    assert int((layer.weight_mask == 0).sum()) == 8


def test_checkpoints_hold_the_pruned_weights_while_training_keeps_the_masks(tmp_path: Path) -> None:
    class Check(ModelPruning):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            self.masks_kept = hasattr(pl_module.layer[0], "weight_mask")

    model = TwoLayers()
    pruning = Check("random_unstructured", amount=0.5, parameters_to_prune=[(model.layer[0], "weight")])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(tmp_path, [pruning, ckpt], model, max_epochs=2, enable_checkpointing=True)
    assert pruning.masks_kept
    state = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["state_dict"]
    assert "layer.0.weight" in state and not any(k.endswith(("_orig", "_mask")) for k in state)
    assert (
        int((state["layer.0.weight"] == 0).sum()) == 24
    )  # 16 after epoch 0, half of the other 16 after epoch 1
    torch.testing.assert_close(state["layer.0.weight"], model.layer[0].weight.detach())


def test_verbose_logs_the_sparsity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = TwoLayers()
    pruning = ModelPruning(
        "l1_unstructured", amount=0.5, verbose=2, parameters_to_prune=[(model.layer[0], "weight")]
    )
    with caplog.at_level(logging.INFO, logger="torchplug"):  # the suite quiets it
        _fit(tmp_path, [pruning], model)
    messages = [m for m in caplog.messages if m.startswith("Applied")]
    assert messages[0] == "Applied `L1Unstructured`. Pruned: 0/32 (0.00%) -> 16/32 (50.00%)"
    assert messages[1].startswith(
        "Applied `L1Unstructured` to `Linear(in_features=4, out_features=8, bias=True).weight`"
    )


def test_sanitize_keeps_only_parameters() -> None:
    model = TwoLayers()
    model.layer[0].some_flag = True
    pairs = ModelPruning.sanitize_parameters_to_prune(model, (), ["weight", "bias", "some_flag"])
    assert {(id(m), n) for m, n in pairs} == {
        (id(model.layer[i]), n) for i in (0, 2) for n in ("weight", "bias")
    }
    with pytest.raises(MisconfigurationError, match="don't exist in the model"):
        ModelPruning.sanitize_parameters_to_prune(model, [(nn.Linear(1, 1), "weight")])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pruning_fn": "l1_unstructured", "parameter_names": ["chocolate"]}, r"chocolate isn't in \('weight', 'bias'\)"),
        ({"pruning_fn": {}}, r"expected to be a str in \["),
        ({"pruning_fn": "random_structured"}, "`pruning_dim` should be provided"),
        ({"pruning_fn": "ln_structured", "pruning_dim": 0}, "the `pruning_norm` should be provided"),
        ({"pruning_fn": "random_structured", "pruning_dim": 0}, "use_global_unstructured=False"),
        ({"pruning_fn": torch.nn.utils.prune.L1Unstructured, "use_global_unstructured": False}, "only supported with"),
        ({"pruning_fn": "l1_unstructured", "verbose": 3}, r"must be any of \(0, 1, 2\)"),
        ({"pruning_fn": "l1_unstructured", "amount": "half"}, "amount='half'"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationError, match=match):
        ModelPruning(**kwargs)


def test_pruning_after_validation_keeps_training(tmp_path: Path) -> None:
    # Validation within fit runs under no_grad, not inference_mode: masks made there are usable by the next epoch.
    model = TwoLayers()
    pruning = ModelPruning(
        "random_unstructured", amount=0.25, prune_on_train_epoch_end=False, make_pruning_permanent=False
    )
    trainer = torchplug.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_val_batches=1,
        callbacks=[pruning],
        **QUIET,
    )
    trainer.fit(model, regression_loader(n=16, batch_size=8), regression_loader(n=8, batch_size=8))
    assert int((model.layer[0].weight_mask == 0).sum()) + int((model.layer[2].weight_mask == 0).sum()) > 0
    assert trainer.global_step == 4
