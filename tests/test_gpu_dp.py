"""``strategy="dp"`` on real GPUs against ``single_device``: same weights, same logged values, each replica on
its own GPU, dataclass batches scattered, ``training_step_end``, evaluation and prediction, bf16 autocast.

Skipped (with the reason) where CUDA is absent; the two-GPU tests also where only one GPU is present. Run with
``python -m pytest -m gpu tests/test_gpu_dp.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Module
from torchplug.testing import QUIET

pytest.importorskip("torchplug_cuda")
pytest.importorskip("torchplug_dp")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.xdist_group("gpu"),  # one worker runs every GPU test, one after the other
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.filterwarnings("ignore:strategy='dp'"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def loader(n: int = 56, batch_size: int = 7, as_dataclass: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=generator)
    data = TensorDataset(x, x @ torch.linspace(-1, 1, 8).unsqueeze(1))
    if not as_dataclass:
        return DataLoader(data, batch_size=batch_size)

    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        return Batch(torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))

    return DataLoader(data, batch_size=batch_size, collate_fn=collate)


class Regression(Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(8, 1)
        self.devices_seen: set[torch.device] = set()
        self.step_sizes: list[int] = []

    def _unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (batch.x, batch.y) if isinstance(batch, Batch) else batch

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = self._unpack(batch)
        assert x.device == self.device == self.layer.weight.device, (x.device, self.device)
        self.devices_seen.add(self.device)
        offset = torch.zeros(1, device=self.device) + torch.zeros(1).type_as(x)
        loss = nn.functional.mse_loss(self.layer(x) + offset, y)
        self.log("train_loss", loss)
        self.log("samples", float(x.shape[0]), reduce_fx="sum")
        self.log("epoch_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = self._unpack(batch)
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.layer(self._unpack(batch)[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path: Any, strategy: str, devices: Any, model: Module | None = None, **kwargs: Any) -> tuple[Module, Any]:
    model = model if model is not None else Regression()
    train = kwargs.pop("train", None) or loader()
    trainer = torchplug.Trainer(accelerator="gpu", devices=devices, strategy=strategy, max_epochs=2,
                                num_sanity_val_steps=0, **{**QUIET, "default_root_dir": str(tmp_path)}, **kwargs)  # fmt: skip
    trainer.fit(model, train, loader(n=21))
    return model, trainer


def weights(model: Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


def test_one_gpu_gives_exactly_the_single_device_result(tmp_path):
    single, single_trainer = fit(tmp_path, "single_device", 1)
    dp, dp_trainer = fit(tmp_path, "dp", 1)
    assert torch.equal(weights(dp), weights(single))
    for key in ("train_loss", "epoch_loss", "val_loss", "samples"):
        assert float(dp_trainer.callback_metrics[key]) == float(single_trainer.callback_metrics[key]), key


@two_gpus
def test_two_gpus_match_single_device_even_with_uneven_splits(tmp_path):
    """Batches of 7 split 4 + 3: the per-GPU losses are averaged by share, so the step is the single device's."""
    single, single_trainer = fit(tmp_path, "single_device", 1)
    dp, dp_trainer = fit(tmp_path, "dp", 2)
    assert dp.devices_seen == {torch.device("cuda", 0), torch.device("cuda", 1)}
    assert torch.allclose(weights(dp), weights(single), atol=1e-5)
    for key in ("train_loss", "epoch_loss", "val_loss"):
        assert float(dp_trainer.callback_metrics[key]) == pytest.approx(float(single_trainer.callback_metrics[key]), rel=1e-4)
    assert float(dp_trainer.callback_metrics["samples"]) == 7.0  # summed over the GPUs, as asked
    assert dp.layer.weight.device == torch.device("cuda", 0)


@two_gpus
def test_dataclass_batches_are_scattered(tmp_path):
    dp, _ = fit(tmp_path, "dp", 2, train=loader(as_dataclass=True))
    single, _ = fit(tmp_path, "single_device", 1, train=loader(as_dataclass=True))
    assert dp.devices_seen == {torch.device("cuda", 0), torch.device("cuda", 1)}
    assert torch.allclose(weights(dp), weights(single), atol=1e-5)


@two_gpus
def test_training_step_end_receives_every_gpus_loss(tmp_path):
    received: list[torch.Tensor] = []

    class WithStepEnd(Regression):
        def training_step_end(self, outputs: torch.Tensor) -> torch.Tensor:
            received.append(outputs.detach())
            return outputs.sum()

    fit(tmp_path, "dp", 2, model=WithStepEnd())
    assert received and all(r.shape == (2,) and r.device == torch.device("cuda", 0) for r in received)


@two_gpus
def test_prediction_is_gathered_in_batch_order(tmp_path):
    model = Regression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = torchplug.Trainer(accelerator="gpu", devices=2, strategy="dp", **QUIET)
    predictions = trainer.predict(model, loader(n=14))
    expected = model.layer.cpu()(next(iter(loader(n=14, batch_size=14)))[0])
    assert predictions[0].device == torch.device("cuda", 0) and predictions[0].shape == (7, 1)
    assert torch.allclose(torch.cat(predictions).cpu(), expected.detach(), atol=1e-5)


@two_gpus
def test_bf16_autocast_reaches_every_replica(tmp_path):
    pytest.importorskip("torchplug_amp")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    seen: list[tuple[bool, torch.dtype, torch.dtype]] = []

    class Recording(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, _ = batch
            seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), self.layer(x).dtype))
            return super().training_step(batch, batch_idx)

    fit(tmp_path, "dp", 2, model=Recording(), precision="bf16-mixed")
    assert seen and all(s == (True, torch.bfloat16, torch.bfloat16) for s in seen)
