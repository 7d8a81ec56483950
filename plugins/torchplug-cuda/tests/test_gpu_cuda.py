"""The cuda accelerator on a real GPU: end-to-end training, batches moved, ``self.device`` in every hook, no
host synchronisation in the hot loop, and reproducible runs with ``deterministic=True``.

Skipped (with the reason) where CUDA is absent; run them on a GPU machine with
``python -m pytest -m gpu plugins/torchplug-cuda plugins/torchplug-dp``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug import Callback, Module
from torchplug.testing import QUIET, BoringModel, regression_loader
from torchplug.utilities import apply_to_collection

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.xdist_group("gpu"),  # one worker runs every GPU test, one after the other
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@dataclass
class Pair:
    features: torch.Tensor
    target: torch.Tensor
    note: str = "kept as it is"


def nested_batches(n: int = 32, batch_size: int = 8, pin_memory: bool = False) -> DataLoader:
    """Batches shaped ``{"pair": Pair(x, y), "both": (x, [y]), "id": str}``, built by the collate function."""
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4) / (n * 4)
    data = TensorDataset(x, x.sum(1, keepdim=True))

    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        xs, ys = torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])
        return {"pair": Pair(xs, ys), "both": (xs.clone(), [ys.clone()]), "id": "batch"}

    return DataLoader(data, batch_size=batch_size, collate_fn=collate, pin_memory=pin_memory)


def tensors_in(batch: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found


class DeviceRecorder(Module):
    """Records ``self.device`` in every hook it overrides and checks where batches and new tensors live."""

    HOOKS = (
        "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start",
        "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
        "on_train_batch_end", "on_validation_start", "on_validation_epoch_end", "on_train_epoch_end",
        "on_train_end", "on_fit_end", "teardown",
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.seen: dict[str, set[torch.device]] = {}
        self.losses: list[torch.Tensor] = []

    def _see(self, name: str) -> None:
        self.seen.setdefault(name, set()).add(self.device)

    def _step(self, batch: dict[str, Any], name: str) -> torch.Tensor:
        self._see(name)
        for tensor in tensors_in(batch):
            assert tensor.device == self.device, f"{name}: batch tensor on {tensor.device}, module on {self.device}"
        assert batch["pair"].note == "kept as it is" and batch["id"] == "batch"
        x, y = batch["pair"].features, batch["both"][1][0]
        noise = torch.zeros(x.shape[0], 1, device=self.device)
        offset = torch.zeros(1).type_as(x)
        assert noise.device == offset.device == self.device == self.layer.weight.device
        self.calls += 1  # a buffer, moved with the module
        return nn.functional.mse_loss(self.layer(x) + noise + offset, y)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "training_step")
        self.losses.append(loss.detach())
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", self._step(batch, "validation_step"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self._see("configure_optimizers")
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _recorder(name: str) -> Any:
    def hook(self: DeviceRecorder, *args: Any, **kwargs: Any) -> None:
        self._see(name)

    hook.__name__ = name
    return hook


for _name in DeviceRecorder.HOOKS:  # overridden on the class, where the trainer looks for overrides
    setattr(DeviceRecorder, _name, _recorder(_name))


@pytest.mark.parametrize("pin_memory", [False, True])
def test_fit_on_the_gpu_moves_everything_and_self_device_is_right_everywhere(tmp_path, pin_memory):
    model = DeviceRecorder()
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, max_epochs=3, limit_val_batches=2,
                                **{**QUIET, "default_root_dir": str(tmp_path)})  # fmt: skip
    trainer.fit(model, nested_batches(pin_memory=pin_memory), nested_batches(n=16, pin_memory=pin_memory))
    expected = torch.device("cuda", 0)
    assert trainer.root_device == expected
    assert set(model.seen) >= set(DeviceRecorder.HOOKS) | {"training_step", "validation_step", "configure_optimizers"}
    assert all(devices == {expected} for devices in model.seen.values()), model.seen
    assert model.layer.weight.device == expected and model.calls.device == expected
    assert float(model.calls) == 3 * 4 + 2 + 3 * 2  # training steps, sanity steps, validation steps
    assert float(sum(model.losses[-4:])) < 0.5 * float(sum(model.losses[:4]))  # last epoch vs first


@two_gpus
def test_devices_pick_the_gpu(tmp_path):
    model = DeviceRecorder()
    seen_current: list[int] = []

    class Current(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            seen_current.append(torch.cuda.current_device())

    trainer = torchplug.Trainer(accelerator="gpu", devices=[1], max_steps=2, callbacks=[Current()],
                                **{**QUIET, "default_root_dir": str(tmp_path)})  # fmt: skip
    trainer.fit(model, nested_batches())
    assert trainer.root_device == torch.device("cuda", 1)
    assert all(devices == {torch.device("cuda", 1)} for devices in model.seen.values())
    assert seen_current == [1, 1]


def test_validate_test_and_predict_on_the_gpu(tmp_path):
    model = BoringModel()
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, max_epochs=1, **{**QUIET, "default_root_dir": str(tmp_path)})
    trainer.fit(model, regression_loader())
    assert trainer.validate(model, regression_loader(n=16))[0]["val_loss"] >= 0
    assert trainer.test(model, regression_loader(n=16))[0]["test_loss"] >= 0
    predictions = trainer.predict(model, regression_loader(n=16))
    assert predictions[0].device.type == "cuda" and predictions[0].shape == (8, 1)


class SyncGuard(Callback):
    """Turns CUDA's sync debug mode to "error" for the steady-state steps: any host synchronisation there (a
    ``.item()``, a blocking copy, a ``bool`` of a CUDA tensor) raises."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.checked = first, last, 0

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.first:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.first <= batch_idx <= self.last:
            self.checked += 1
        if batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")


class LoggingModel(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_loss_epoch_mean", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.parametrize("pin_memory", [False, True])
def test_the_hot_loop_makes_no_host_synchronisation(tmp_path, pin_memory):
    data = TensorDataset(torch.randn(96, 4), torch.randn(96, 1))
    loader = DataLoader(data, batch_size=8, pin_memory=pin_memory)
    guard = SyncGuard(first=2, last=11)
    trainer = torchplug.Trainer(
        accelerator="gpu", devices=1, max_epochs=1, log_every_n_steps=1000, gradient_clip_val=1.0,
        callbacks=[guard], **{**QUIET, "default_root_dir": str(tmp_path)},
    )  # fmt: skip
    try:
        trainer.fit(LoggingModel(), loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.checked == 10
    assert "train_loss_epoch_mean" in trainer.callback_metrics


def test_deterministic_runs_repeat_bit_for_bit(tmp_path):
    def run() -> torch.Tensor:
        torchplug.seed_everything(7)
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))

        class Regression(BoringModel):
            def __init__(self) -> None:
                super().__init__(features=16, lr=0.05)
                self.layer = model

        trainer = torchplug.Trainer(accelerator="gpu", devices=1, max_epochs=2, deterministic=True,
                                    **{**QUIET, "default_root_dir": str(tmp_path)})  # fmt: skip
        data = TensorDataset(torch.randn(128, 16, generator=torch.Generator().manual_seed(1)), torch.randn(128, 1))
        trainer.fit(Regression(), DataLoader(data, batch_size=16, shuffle=True))
        return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])

    try:
        assert torch.equal(run(), run())
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_cuda_rng_is_checkpointed_and_restored(tmp_path):
    """The root GPU's generator is saved with this rank's generators and set back where the resumed run continues."""
    path, saved, at_resume = tmp_path / "step2.ckpt", [], []

    class SaveAtStep2(Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == 2:
                trainer.save_checkpoint(path)
                saved.append(torch.cuda.get_rng_state(trainer.root_device))

    class RecordAtResume(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            at_resume.append(torch.cuda.get_rng_state(trainer.root_device))

        def on_fit_start(self, trainer: Any, module: Any) -> None:
            torch.randn(8, device=trainer.root_device)  # GPU draws before the resume point do not leak into it

    class Noisy(BoringModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            noise = torch.randn(batch[0].shape, device=self.device)  # draws from the GPU's generator
            return super().training_step((batch[0] + 0.01 * noise, batch[1]), batch_idx)

    options = {**QUIET, "default_root_dir": str(tmp_path)}
    torchplug.Trainer(accelerator="gpu", devices=1, max_steps=3, callbacks=[SaveAtStep2()], **options).fit(
        Noisy(), regression_loader()
    )
    checkpoint = torchplug.load_checkpoint(path)
    assert torch.equal(checkpoint["ranks"][0]["rng_states"]["torch.cuda"], saved[0])
    torch.cuda.manual_seed(1234)  # another state: the resumed run must take the saved one
    assert not torch.equal(torch.cuda.get_rng_state(0), saved[0])
    torchplug.Trainer(accelerator="gpu", devices=1, max_steps=4, callbacks=[RecordAtResume()], **options).fit(
        Noisy(), regression_loader(), ckpt_path=str(path)
    )
    assert torch.equal(at_resume[0], saved[0])


def test_auto_select_gpus_against_the_real_driver(tmp_path):
    from torchplug_cuda import _gpus

    try:
        states = _gpus.visible_gpus(_gpus.query_gpus())
    except _gpus.GPUQueryError as err:
        pytest.skip(f"no NVML or nvidia-smi here: {err}")
    if not any(not s.pids or s.pids == (os.getpid(),) for s in states):
        pytest.skip("every GPU is busy with another process")
    trainer = torchplug.Trainer(accelerator="gpu", devices=1, auto_select_gpus=True, max_steps=1,
                                **{**QUIET, "default_root_dir": str(tmp_path)})  # fmt: skip
    trainer.fit(BoringModel(), regression_loader())
    assert trainer.root_device.index == trainer.device_ids[0]
