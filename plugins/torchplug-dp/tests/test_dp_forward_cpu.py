"""The whole dp step through the real Trainer, on the CPU: two replicas against single_device.

This machine has no GPU, so three stand-ins, each replacing only CUDA work:

* ``CPUDataParallel`` replaces DataParallel's CUDA operations (scatter → ``torch.chunk``, gather → ``torch.cat``,
  the parameter broadcast → replicas that share the parameters, the per-GPU streams → plain threads) and keeps
  everything of ours: splitting nested batches, replica views, merging logs, joining outputs;
* ``StandInGPU`` is an accelerator that declares ``device_type = "cuda"`` (dp checks that capability, not a name,
  so it accepts it) and two devices, and computes on the CPU (it answers no ``torchplug_root_device``);
* ``CPUDataParallelStrategy`` is the real strategy with the stand-in wrapper.

The real thing runs in tests/test_gpu_dp.py wherever two GPUs exist.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Module, hookimpl
from torchplug.accelerators import Accelerator
from torchplug.testing import QUIET
from torchplug_dp import DataParallelStrategy
from torchplug_dp._parallel import DataParallel

REPLICAS = 2


def built_as_without_cuda() -> Any:
    """torch's DataParallel moves the module to the first GPU wherever CUDA is present; the stand-ins compute on the
    CPU, so they are built as on a machine without CUDA, on any machine (torch asks only
    ``_get_available_device_type``, as ``torch.nn.parallel.data_parallel`` imported it)."""
    return mock.patch("torch.nn.parallel.data_parallel._get_available_device_type", lambda: None)


class CPUDataParallel(DataParallel):
    def __init__(self, module: nn.Module, trainer: Any) -> None:
        with built_as_without_cuda():
            super().__init__(module, [0], trainer)
        self.device_ids, self.output_device, self.dim = list(range(REPLICAS)), 0, 0
        self.threads_used: set[str] = set()

    def _split(self, tensor: torch.Tensor) -> Any:
        return torch.chunk(tensor, len(self.device_ids), self.dim)

    def _join(self, tensors: Any) -> torch.Tensor:
        return torch.cat(list(tensors), self.dim)

    def _stack(self, scalars: Any) -> torch.Tensor:
        return torch.stack(list(scalars))

    def replicate(self, module: nn.Module, device_ids: Any) -> list[nn.Module]:
        replicas = []
        for _ in device_ids:
            copies = {}
            for original in module.modules():
                copy = original._replicate_for_data_parallel()
                copy._parameters = dict(original._parameters)  # shared, where replicate broadcasts them
                copies[original] = copy
            for original, copy in copies.items():
                copy._modules = {name: copies[child] for name, child in original._modules.items()}
            replicas.append(copies[module])
        return replicas

    def _run(self, replicas: Any, parts: Any, kw_parts: Any, devices: Any) -> list[Any]:
        results: list[Any] = [None] * len(replicas)
        errors: list[BaseException | None] = [None] * len(replicas)

        def run(i: int) -> None:
            self.threads_used.add(threading.current_thread().name)
            try:
                results[i] = replicas[i](*parts[i], **kw_parts[i])
            except BaseException as err:
                errors[i] = err

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None:
                raise error
        return results

    def _output_device(self) -> torch.device:
        return torch.device("cpu")


class CPUDataParallelStrategy(DataParallelStrategy):
    @hookimpl
    def torchplug_wrap_module(self, trainer: Any, module: nn.Module) -> nn.Module:
        self._module = CPUDataParallel(module, trainer)
        return self._module


class StandInGPU(Accelerator):
    name = "stand-in-gpu"
    device_type = "cuda"

    @classmethod
    def device_count(cls) -> int:
        return REPLICAS


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor


def loader(n: int = 42, batch_size: int = 7, as_dataclass: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=generator)
    data = TensorDataset(x, x @ torch.linspace(-1, 1, 6).unsqueeze(1))
    if not as_dataclass:
        return DataLoader(data, batch_size=batch_size)
    return DataLoader(data, batch_size=batch_size, collate_fn=lambda items: Batch(*map(torch.stack, zip(*items, strict=True))))


class Regression(Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        self.devices_seen: set[torch.device] = set()
        self.sizes_seen: list[int] = []
        self.step_ends: list[Any] = []

    def _loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        x, y = (batch.x, batch.y) if isinstance(batch, Batch) else batch
        return nn.functional.mse_loss(self.net(x), y), x.shape[0]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        loss, size = self._loss(batch)
        self.devices_seen.add(self.device)
        self.sizes_seen.append(size)
        self.log("train_loss", loss)
        self.log("samples", float(size), reduce_fx="sum")
        self.log("epoch_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss, "size": size}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch)[0])

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.net(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path: Any, dp: bool, **kwargs: Any) -> tuple[Regression, torchplug.Trainer]:
    model = kwargs.pop("model", None) or Regression()
    train = loader(as_dataclass=kwargs.pop("as_dataclass", False))
    stand_in = {"accelerator": StandInGPU(), "strategy": CPUDataParallelStrategy(), "devices": REPLICAS}
    options = stand_in if dp else {"accelerator": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = torchplug.Trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[_KeepWrapper()], **options,
                                    **{**QUIET, "default_root_dir": str(tmp_path)}, **kwargs)  # fmt: skip
    trainer.fit(model, train, loader(n=21))
    return model, trainer


class _KeepWrapper(torchplug.Callback):
    """Keeps the strategy's wrapper (``trainer.model`` during the run; the trainer lets go of it at teardown)."""

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.wrapper = trainer.model


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("as_dataclass", [False, True])
def test_two_replicas_train_like_one_device_with_uneven_splits(tmp_path, as_dataclass):
    """Batches of 7 split 4 + 3 (the last validation batch of 7 too); losses and logs are combined by share."""
    single, single_trainer = fit(tmp_path, dp=False, as_dataclass=as_dataclass)
    dp, dp_trainer = fit(tmp_path, dp=True, as_dataclass=as_dataclass)
    run = dp_trainer.run
    assert (run.accelerator, run.device_type, run.device_ids) == ("stand-in-gpu", "cuda", (0, 1))
    assert dp.devices_seen == {torch.device("cuda", 0), torch.device("cuda", 1)}
    assert single.devices_seen == {torch.device("cpu")}
    assert sorted(set(dp.sizes_seen)) == [3, 4] and len(dp.sizes_seen) == 2 * len(single.sizes_seen)
    wrapper = next(c for c in dp_trainer.callbacks if isinstance(c, _KeepWrapper)).wrapper
    assert len(wrapper.threads_used) >= 2
    assert torch.allclose(weights(dp), weights(single), atol=1e-6)
    for key in ("train_loss", "epoch_loss", "val_loss"):
        assert float(dp_trainer.callback_metrics[key]) == pytest.approx(float(single_trainer.callback_metrics[key]), rel=1e-5)
    assert float(dp_trainer.callback_metrics["samples"]) == 7.0


def test_step_end_sees_every_replicas_output(tmp_path):
    class WithStepEnd(Regression):
        def training_step_end(self, outputs: dict[str, Any]) -> torch.Tensor:
            self.step_ends.append((outputs["loss"].detach().clone(), outputs["size"]))
            return outputs["loss"].max()

    model, _ = fit(tmp_path, dp=True, model=WithStepEnd())
    assert model.step_ends and all(loss.shape == (2,) and size == [4, 3] for loss, size in model.step_ends)


def test_an_error_in_a_replica_reaches_the_caller(tmp_path):
    class Failing(Regression):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.device == torch.device("cuda", 1):
                raise ValueError("bad batch on the second GPU")
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="bad batch on the second GPU"):
        fit(tmp_path, dp=True, model=Failing())


def test_prediction_is_joined_in_batch_order(tmp_path):
    model, trainer = fit(tmp_path, dp=True)
    predictions = trainer.predict(model, loader(n=14))
    full = model.net(next(iter(loader(n=14, batch_size=14)))[0])
    assert [p.shape for p in predictions] == [(7, 1), (7, 1)]
    assert torch.allclose(torch.cat(predictions), full.detach(), atol=1e-6)
