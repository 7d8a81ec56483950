"""Training on a real XLA device (PyTorch/XLA's CPU device, ``PJRT_DEVICE=CPU``) in this process.

Runs in ``.venv-xla`` (torch and torch-xla 2.9.0): ``make test-xla``. Every run here uses one device, the only
configuration the pytest process can hold: PyTorch/XLA starts its runtime once per process. Several devices,
SPMD and spawned replicas run in fresh processes in ``test_xla_processes.py``.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.xla
torch_xla = pytest.importorskip("torch_xla", reason="needs torch_xla: run in .venv-xla (make test-xla)")

import torch_xla.debug.metrics as met  # noqa: E402
from xla_models import Regressor, loader, trainer  # noqa: E402

import torchplug  # noqa: E402
from torchplug import MisconfigurationError  # noqa: E402
from torchplug._checkpoint import load_checkpoint  # noqa: E402
from torchplug.callbacks import ModelCheckpoint  # noqa: E402
from torchplug.loggers import CSVLogger  # noqa: E402
from torchplug_xla import XLAAccelerator  # noqa: E402


def compilations() -> int:
    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def transfers_to_host() -> int:
    data = met.metric_data("TransferFromDeviceTime")
    return int(data[0]) if data else 0


class Probe(torchplug.Callback):
    """After each training batch: (global_step, compilations so far, device-to-host transfers so far)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append((trainer.global_step, compilations(), transfers_to_host()))


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().cpu().flatten() for p in model.parameters()])


# ---------------------------------------------------------------------------------------------------- training
def test_training_decreases_the_loss_on_the_xla_device():
    torchplug.seed_everything(0)
    model = Regressor()
    run = trainer(strategy="single_xla", max_epochs=3)
    run.fit(model, loader(shuffle=True), loader(64))
    assert run.root_device.type == "xla"
    assert model.seen["fit_start_device"] == model.seen["train_step_device"] == str(run.root_device)
    assert model.seen["train_input_device"] == str(run.root_device)
    assert all(p.device.type == "xla" for p in model.parameters())
    assert model.seen["autocast"] is False and model.seen["activation_dtype"] == torch.float32
    losses = [float(v) for v in model.losses]
    assert len(losses) == 24
    assert losses[-1] < losses[0] / 10
    assert float(run.callback_metrics["val_loss"]) < losses[0] / 10


def test_bf16_mixed_runs_the_step_in_bfloat16_autocast_on_xla():
    torchplug.seed_everything(0)
    model = Regressor()
    run = trainer(precision="bf16-mixed", max_epochs=3)
    run.fit(model, loader(shuffle=True))
    assert model.seen["autocast"] is True
    assert model.seen["activation_dtype"] == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: parameters stay float32
    losses = [float(v) for v in model.losses]
    assert losses[-1] < losses[0] / 5


@pytest.mark.parametrize("precision", ["16-mixed", 16])
def test_float16_precision_runs_as_bf16_on_xla_with_a_notice(precision):
    with pytest.warns(UserWarning, match="TPUs have no float16 arithmetic"):
        run = trainer(precision=precision)
    assert run.precision_name == "bf16-mixed"
    model = Regressor()
    run.fit(model, loader(64))
    assert model.seen["activation_dtype"] == torch.bfloat16


def test_bf16_true_converts_the_module_on_xla():
    model = Regressor()
    run = trainer(precision="bf16-true", max_epochs=1)
    run.fit(model, loader(64))
    assert all(p.dtype == torch.bfloat16 and p.device.type == "xla" for p in model.parameters())


def test_auto_strategy_is_single_xla_for_one_device():
    assert trainer().strategy_name == "single_xla"


def test_xla_strategy_with_one_replica_trains_like_single_xla():
    results = {}
    for strategy in ("xla", "single_xla"):
        torchplug.seed_everything(0)
        model = Regressor()
        run = trainer(strategy=strategy)
        run.fit(model, loader(shuffle=True), loader(64))
        assert run.world_size == 1 and run.global_rank == 0 and run.root_device.type == "xla"
        results[strategy] = (weights(model), float(run.callback_metrics["val_loss"]))
    assert torch.equal(results["xla"][0], results["single_xla"][0])
    assert results["xla"][1] == results["single_xla"][1]


# ---------------------------------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_steady_state_steps_neither_recompile_nor_read_the_device(optimizer, tmp_path):
    """One compiled graph per step from the start; the host reads values only at the logging interval, where a
    logger writes them (with no logger and no progress bar, logged values stay on the device: nothing reads them)."""

    class Scheduled(Regressor):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            schedule = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: 1.0 / (1 + step)
            )  # a new lr every step
            return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    probe = Probe()
    model = Scheduled(optimizer=optimizer)
    logger = CSVLogger(tmp_path)
    run = trainer(max_epochs=2, log_every_n_steps=5, gradient_clip_val=1.0, callbacks=[probe], logger=logger)
    run.fit(model, loader(512))
    steps = [row[0] for row in probe.rows]
    assert steps == list(range(1, 33))
    compiled = [row[1] for row in probe.rows]
    assert compiled[2:] == [compiled[2]] * 30, f"recompiled after the first steps: {compiled}"
    read = [row[2] for row in probe.rows]
    # the logs of step N are read after its on_train_batch_end, so the count rises at the batch after each flush
    for step, count, following in zip(steps[1:], read[1:], read[2:] + [None], strict=True):
        if following is not None and step % 5:
            assert following == count, f"the device was read after step {step}: {read}"
    assert read[-1] - read[0] >= 5  # and it was read at the intervals
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [4, 9, 14, 19, 24, 29]  # what was read is what was written
    assert all(math.isfinite(float(row["train_loss"])) for row in rows)


def test_accumulation_micro_batches_are_cut_into_one_graph_each():
    probe = Probe()
    model = Regressor()
    run = trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[probe], log_every_n_steps=100)
    run.fit(model, loader(shuffle=True))
    assert run.global_step == 8
    compiled = [row[1] for row in probe.rows]
    assert compiled[4:] == [compiled[4]] * 12, compiled
    losses = [float(v) for v in model.losses]
    assert losses[-1] < losses[0] / 5


def test_manual_optimization_steps_and_compiles_once():
    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            opt.step()

    probe = Probe()
    model = Manual()
    trainer(max_epochs=2, callbacks=[probe], log_every_n_steps=100).fit(model, loader())
    compiled = [row[1] for row in probe.rows]
    assert compiled[2:] == [compiled[2]] * 14, compiled
    assert float(model.losses[-1]) < float(model.losses[0]) / 5


def test_evaluation_steps_are_cut_and_compiled_once():
    model = Regressor()
    run = trainer()
    run.validate(model, loader(64, batch_size=16))
    before = compilations()
    run.validate(model, loader(128, batch_size=16))  # twice the batches, same step graph
    assert compilations() - before <= 1  # only the epoch-end mean over 8 values instead of 4 is new


# ---------------------------------------------------------------------------------------------------- stages
def test_validate_test_and_predict_agree_with_the_same_model_on_the_cpu():
    torchplug.seed_everything(0)
    model = Regressor()
    run = trainer(max_epochs=1)
    run.fit(model, loader())
    on_cpu = copy.deepcopy(model).cpu()
    data = loader(64, batch_size=16)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        expected_loss = float(torch.nn.functional.mse_loss(on_cpu(x), y))
        expected_max = float((on_cpu(x) - y).abs().max())
        expected_predictions = on_cpu(x)

    (validated,) = run.validate(model, data)
    assert validated["val_loss"] == pytest.approx(expected_loss, rel=1e-4)
    (tested,) = run.test(model, data)
    assert tested["test_loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert tested["test_max_abs_err"] == pytest.approx(expected_max, rel=1e-4)
    predictions = run.predict(model, data)
    assert len(predictions) == 4 and all(p.shape == (16, 1) for p in predictions)
    assert torch.allclose(torch.cat([p.cpu() for p in predictions]), expected_predictions, atol=1e-5)


def test_checkpoint_from_xla_loads_anywhere_and_resumes_where_training_stopped(tmp_path):
    def fresh_model():
        torchplug.seed_everything(0)
        return Regressor(optimizer="adam")

    straight = fresh_model()
    trainer(max_epochs=2, default_root_dir=tmp_path / "straight").fit(straight, loader())

    first = fresh_model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    run = trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint], default_root_dir=tmp_path)
    run.fit(first, loader())
    saved = load_checkpoint(checkpoint.last_model_path)  # weights_only loading, onto the CPU
    assert saved["global_step"] == 8
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    exp_avg = [s["exp_avg"] for s in saved["optimizer_states"][0]["state"].values()]
    assert exp_avg and all(t.device.type == "cpu" for t in exp_avg)

    resumed = fresh_model()
    again = trainer(max_epochs=2, default_root_dir=tmp_path / "resumed")
    again.fit(resumed, loader(), ckpt_path=checkpoint.last_model_path)
    assert again.global_step == 16
    assert torch.allclose(weights(resumed), weights(straight), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- configuration
def test_xla_strategies_refuse_another_accelerator():
    for strategy in ("xla", "single_xla", "xla_spmd"):
        with pytest.raises(
            MisconfigurationError, match=f"strategy='{strategy}' runs on XLA devices.*accelerator='cpu'"
        ):
            torchplug.Trainer(accelerator="cpu", strategy=strategy, devices=1, logger=False)


def test_device_choices_the_strategies_cannot_run_are_refused(monkeypatch):
    monkeypatch.setenv("CPU_NUM_DEVICES", "3")  # read at construction; the runtime is not touched
    with pytest.raises(MisconfigurationError, match="strategy='single_xla' runs on one device"):
        trainer(strategy="single_xla", devices=2)
    with pytest.raises(MisconfigurationError, match=r"strategy='xla' with devices=\[0, 1\].*devices=3"):
        trainer(strategy="xla", devices=[0, 1])
    with pytest.raises(MisconfigurationError, match=r"strategy='xla_spmd' with devices=\[1\].*devices=3"):
        trainer(strategy="xla_spmd", devices=[1])
    with pytest.raises(MisconfigurationError, match="strategy='xla_spmd' with num_nodes=2"):
        trainer(strategy="xla_spmd", devices=3, num_nodes=2)
    with pytest.raises(MisconfigurationError, match="machine has"):
        trainer(strategy="single_xla", devices=[5])
    assert trainer(strategy="xla", devices=3).num_processes == 3


def test_no_configured_device_is_an_error_saying_what_to_set(monkeypatch):
    monkeypatch.delenv("PJRT_DEVICE")
    monkeypatch.setattr("torchplug_xla._runtime.PCI_DEVICES", "/nonexistent")
    assert XLAAccelerator.is_available() is False
    with pytest.raises(MisconfigurationError, match="PJRT_DEVICE=CPU"):
        trainer(devices="auto")


def test_cli_reports_the_xla_devices():
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "4"}
    out = subprocess.run(
        [sys.executable, "-m", "torchplug.cli", "plugins", "--check"], env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    line = next(line for line in out.splitlines() if line.strip().startswith("tpu"))
    assert "torchplug-xla" in line and "yes (4 devices)" in line
    info = XLAAccelerator.describe()
    assert info["torch-xla"] == torch_xla.__version__.split("+")[0]
    assert info["PJRT_DEVICE"] == "CPU" and info["xla devices"] == "1"
