"""Every Trainer flag of the core, each checked so that the test fails if the flag were ignored."""

import math
import os

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from torchplug import Callback, MisconfigurationError, Trainer
from torchplug.testing import QUIET, BoringModel, regression_loader


class Recorder(BoringModel):
    """Counts what the loop did."""

    def __init__(self):
        super().__init__()
        self.train_batches = []  # (epoch, batch_idx)
        self.val_batches = []  # (epoch, global_step, batch_idx)
        self.grad_norms = []
        self.max_abs_grads = []

    def training_step(self, batch, batch_idx):
        self.train_batches.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_batches.append((self.current_epoch, self.global_step, batch_idx))
        return super().validation_step(batch, batch_idx)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        # after clipping, right before the optimizer steps with these gradients
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.max_abs_grads.append(max(float(g.abs().max()) for g in grads))


def fit(model=None, n=64, batch_size=8, val=True, **kwargs):
    model = model or Recorder()
    trainer = Trainer(**{**QUIET, "accelerator": "cpu", "num_sanity_val_steps": 0, **kwargs})
    trainer.fit(model, regression_loader(n, batch_size), regression_loader(32, 8) if val else None)
    return trainer, model


def test_max_epochs_and_counters():
    trainer, model = fit(max_epochs=2)
    assert trainer.current_epoch == 2 and trainer.global_step == 16
    assert len(model.train_batches) == 16


def test_default_max_epochs_is_1000_and_max_steps_wins():
    assert Trainer(accelerator="cpu", **QUIET).max_epochs is None  # as Lightning reports it until fit resolves it
    with pytest.warns(UserWarning, match="`max_epochs` was not set. Setting it to 1000 epochs"):
        trainer, _ = fit(limit_train_batches=1, val=False)
    assert trainer.max_epochs == 1000 and trainer.current_epoch == 1000
    trainer, model = fit(max_steps=5)
    assert trainer.global_step == 5 and trainer.max_epochs == -1


def test_steps_take_precedence_over_epochs():
    trainer, _ = fit(max_epochs=5, max_steps=3)
    assert trainer.global_step == 3


class StopAtOnce(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = True


def test_min_epochs_and_min_steps_hold_off_a_stop():
    trainer, _ = fit(max_epochs=10, callbacks=[StopAtOnce()])
    assert trainer.global_step == 1
    trainer, _ = fit(max_epochs=10, min_epochs=2, callbacks=[StopAtOnce()])
    assert trainer.current_epoch == 2
    trainer, _ = fit(max_epochs=10, min_steps=11, callbacks=[StopAtOnce()])
    assert trainer.global_step == 11


def test_check_val_every_n_epoch():
    _, model = fit(max_epochs=4, check_val_every_n_epoch=2)
    assert sorted({epoch for epoch, _, _ in model.val_batches}) == [1, 3]


def test_val_check_interval_int_and_float():
    _, model = fit(max_epochs=1, val_check_interval=3)  # 8 batches: after 3, 6 and at the end
    assert sorted({step for _, step, _ in model.val_batches}) == [3, 6]  # as Lightning: none extra at epoch end
    _, model = fit(max_epochs=1, val_check_interval=0.5)
    assert sorted({step for _, step, _ in model.val_batches}) == [4, 8]


def test_val_check_interval_longer_than_the_epoch_fails():
    with pytest.raises(MisconfigurationError, match=r"`val_check_interval` \(20\) must be less than or equal to the number of the training batches \(8\)"):
        fit(val_check_interval=20)


def test_num_sanity_val_steps():
    model = Recorder()
    Trainer(accelerator="cpu", **{**QUIET, "max_steps": 1, "num_sanity_val_steps": 2}).fit(
        model, regression_loader(64, 8), regression_loader(32, 8)
    )
    sanity = [b for b in model.val_batches if b[1] == 0]
    assert len(sanity) == 2
    model = Recorder()
    Trainer(accelerator="cpu", **{**QUIET, "max_steps": 1, "num_sanity_val_steps": -1}).fit(
        model, regression_loader(64, 8), regression_loader(32, 8)
    )
    assert len([b for b in model.val_batches if b[1] == 0]) == 4
    model = Recorder()
    Trainer(accelerator="cpu", **{**QUIET, "max_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0}).fit(
        model, regression_loader(64, 8), regression_loader(32, 8)
    )
    assert model.val_batches == []


@pytest.mark.parametrize(("limit", "expected"), [(3, 3), (0.25, 2), (0, 0), (1.0, 8)])
def test_limit_train_batches(limit, expected):
    _, model = fit(max_epochs=1, limit_train_batches=limit)
    assert len(model.train_batches) == expected


def test_limit_val_test_predict_batches():
    _, model = fit(max_epochs=1, limit_val_batches=2)
    assert len(model.val_batches) == 2
    trainer = Trainer(accelerator="cpu", **QUIET, limit_test_batches=0.5, limit_predict_batches=1)
    assert trainer.test(BoringModel(), regression_loader(32, 8)) and trainer.num_test_batches == [2]
    assert len(trainer.predict(BoringModel(), regression_loader(32, 8))) == 1


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("max_epochs", -2, "max_epochs=-2"),
        ("min_epochs", -1, "min_epochs=-1"),
        ("max_steps", -5, "max_steps=-5"),
        ("limit_train_batches", 1.5, r"limit_train_batches=1.5: you passed invalid value"),
        ("limit_val_batches", -1, "limit_val_batches=-1"),
        ("val_check_interval", 1.5, "val_check_interval=1.5"),
        ("val_check_interval", 0, "val_check_interval=0"),
        ("check_val_every_n_epoch", 0, "check_val_every_n_epoch=0"),
        ("num_sanity_val_steps", -2, "num_sanity_val_steps=-2"),
        ("log_every_n_steps", -1, "log_every_n_steps=-1"),
        ("accumulate_grad_batches", 0, "accumulate_grad_batches=0"),
        ("gradient_clip_val", -1.0, "gradient_clip_val=-1.0"),
        ("gradient_clip_algorithm", "l3", "gradient_clip_algorithm='l3'"),
        ("num_nodes", 0, "num_nodes=0"),
        ("fast_dev_run", -1, "fast_dev_run=-1"),
    ],
)
def test_out_of_range_values_name_the_flag(flag, value, match):
    with pytest.raises(MisconfigurationError, match=match):
        Trainer(accelerator="cpu", **{**QUIET, flag: value})


def test_min_larger_than_max():
    with pytest.raises(MisconfigurationError, match="min_epochs=3 is larger than max_epochs=2"):
        Trainer(accelerator="cpu", **QUIET, min_epochs=3, max_epochs=2)


def test_gradient_clip_val_norm_and_value():
    _, model = fit(max_steps=3, val=False, gradient_clip_val=1e-3)
    assert all(norm <= 1e-3 + 1e-6 for norm in model.grad_norms)
    _, model = fit(max_steps=3, val=False, gradient_clip_val=1e-4, gradient_clip_algorithm="value")
    assert all(g <= 1e-4 + 1e-9 for g in model.max_abs_grads)
    _, model = fit(max_steps=3, val=False)
    assert max(model.grad_norms) > 1e-3  # without clipping the bounds above would not hold


def test_accumulate_grad_batches_matches_a_bigger_batch():
    torch.manual_seed(0)
    a = BoringModel()
    b = BoringModel()
    b.load_state_dict(a.state_dict())
    Trainer(accelerator="cpu", **QUIET, max_epochs=1, accumulate_grad_batches=4).fit(a, regression_loader(64, 4))
    Trainer(accelerator="cpu", **QUIET, max_epochs=1).fit(b, regression_loader(64, 16))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_accumulation_steps_count_optimizer_steps():
    trainer, _ = fit(max_epochs=1, val=False, accumulate_grad_batches=3)  # 8 batches: steps after 3, 6 and 8
    assert trainer.global_step == 3


def test_log_every_n_steps_writes_at_the_interval():
    class Collect(Callback):
        pass

    from torchplug.loggers import Logger

    class ListLogger(Logger):
        def __init__(self):
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append((step, dict(metrics)))

    logger = ListLogger()
    Trainer(accelerator="cpu", **{**QUIET, "logger": logger}, max_epochs=1, log_every_n_steps=3).fit(
        BoringModel(), regression_loader(64, 8)
    )
    steps = [step for step, row in logger.rows if "train_loss" in row]
    assert steps == [2, 5], logger.rows


def test_fast_dev_run():
    trainer, model = fit(max_epochs=10, fast_dev_run=True)
    assert trainer.global_step == 1 and len(model.val_batches) == 1 and trainer.loggers == []
    trainer, model = fit(max_epochs=10, fast_dev_run=3)
    assert trainer.global_step == 3 and len(model.val_batches) == 3


def test_deterministic_sets_torch_flag():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        fit(max_steps=1, val=False, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_benchmark_is_left_to_the_accelerator():
    """cuDNN's autotuner is the CUDA accelerator's business (plugins/torchplug-cuda tests it): the core and the CPU
    leave torch's global flag alone."""
    before = torch.backends.cudnn.benchmark
    try:
        for value in (True, False):
            torch.backends.cudnn.benchmark = not value
            trainer, _ = fit(max_steps=1, val=False, benchmark=value, accelerator="cpu")
            assert trainer.benchmark is value
            assert torch.backends.cudnn.benchmark is (not value)
    finally:
        torch.backends.cudnn.benchmark = before


def test_default_root_dir_receives_logs_and_checkpoints(tmp_path):
    trainer = Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1)  # fmt: skip
    trainer.fit(BoringModel(), regression_loader(32, 8))
    # the default logger is Lightning's: TensorBoard's event files (tensorboard is installed here)
    assert list(tmp_path.glob("**/events.out.tfevents.*")) and list(tmp_path.glob("**/*.ckpt"))
    assert trainer.log_dir.startswith(str(tmp_path))


def test_enable_checkpointing_false_writes_no_checkpoint(tmp_path):
    Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(BoringModel(), regression_loader(32, 8))  # fmt: skip
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_enable_progress_bar_false_prints_nothing(tmp_path, capsys):
    Trainer(accelerator="cpu", max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
            enable_model_summary=False, enable_progress_bar=False).fit(BoringModel(), regression_loader(32, 8))  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == "" and "batch" not in captured.err


def test_devices_and_num_nodes_on_one_process():
    trainer = Trainer(accelerator="cpu", **QUIET, devices=1, num_nodes=1)
    assert trainer.device_ids == [0] and trainer.world_size == 1 and trainer.strategy_name == "single_device"
    with pytest.raises(MisconfigurationError, match="single_device"):
        Trainer(accelerator="cpu", **QUIET, strategy="single_device", devices=2)


class Endless(IterableDataset):
    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        while True:
            x = torch.randn(8, 4, generator=generator)
            yield x, x.sum(1, keepdim=True)


def test_iterable_dataset_without_length():
    trainer = Trainer(accelerator="cpu", **QUIET, max_steps=5)
    trainer.fit(BoringModel(), DataLoader(Endless(), batch_size=None))
    assert trainer.global_step == 5 and trainer.num_training_batches == math.inf
    with pytest.raises(MisconfigurationError, match="limit_train_batches=0.5: the dataloader has no length"):
        Trainer(accelerator="cpu", **QUIET, max_steps=5, limit_train_batches=0.5).fit(
            BoringModel(), DataLoader(Endless(), batch_size=None)
        )


def test_deterministic_warn_only():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        fit(max_steps=1, val=False, deterministic="warn")
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    with pytest.raises(MisconfigurationError, match="deterministic='yes'"):
        Trainer(accelerator="cpu", **QUIET, deterministic="yes")


def test_epoch_end_order_lets_monitors_see_metrics_logged_in_on_train_epoch_end():
    from torchplug.callbacks import EarlyStopping

    order = []

    class LogsAtEpochEnd(BoringModel):
        def on_train_epoch_end(self):
            order.append("module")
            self.log("train_metric", float(self.current_epoch))  # rises: early stopping in "min" mode stops

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "train_metric"}}

    class Plain(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            order.append("callback")

    class Watching(EarlyStopping):
        def on_train_epoch_end(self, trainer, pl_module):
            order.append("monitor")
            super().on_train_epoch_end(trainer, pl_module)

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=10, callbacks=[Watching(monitor="train_metric", patience=1), Plain()])
    trainer.fit(LogsAtEpochEnd(), regression_loader(16, 8))
    assert order[:3] == ["callback", "module", "monitor"]
    assert trainer.current_epoch == 2  # epoch 0 is the best; epoch 1 is one check without improvement
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.1  # the plateau scheduler saw the metric


class _TwoRanksAlike:
    """Stand-in for the all-reduce of two processes that logged the same values (sum doubles, mean keeps); it
    counts how often a value is reduced. Real two-process reductions are tested in plugins/torchplug-ddp."""

    def __init__(self):
        self.reductions = 0

    from torchplug import hookimpl

    @hookimpl
    def torchplug_all_reduce(self, trainer, tensor, op):
        self.reductions += 1
        return tensor * 2 if op == "sum" else tensor


def test_sync_dist_reduces_the_epoch_aggregate_once():
    class Logs(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("one", 1.0, on_step=True, on_epoch=True, reduce_fx="sum", sync_dist=True)
            return super().training_step(batch, batch_idx)

    ranks = _TwoRanksAlike()
    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=1, plugins=[ranks])
    trainer.fit(Logs(), regression_loader(32, 8))  # 4 batches
    assert float(trainer.callback_metrics["one_step"]) == 2.0
    assert float(trainer.callback_metrics["one_epoch"]) == 8.0  # 4 local ones, summed over 2 "ranks"
    assert ranks.reductions == 4 + 1


def test_val_check_interval_across_epochs_on_a_loader_without_length():
    class Counting(Recorder):
        pass

    model = Counting()
    Trainer(accelerator="cpu", **QUIET, max_steps=10, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0).fit(
        model, DataLoader(Endless(), batch_size=None), regression_loader(16, 8)
    )
    assert sorted({step for _, step, _ in model.val_batches}) == [3, 6, 9]


def test_limit_val_batches_zero_runs_no_validation_at_all():
    starts = []

    class Spy(Callback):
        def on_validation_start(self, trainer, pl_module):
            starts.append(trainer.global_step)

    fit(max_epochs=2, limit_val_batches=0, callbacks=[Spy()], num_sanity_val_steps=2)
    assert starts == []


@pytest.mark.parametrize(("flag", "value"), [("accumulate_grad_batches", 2), ("gradient_clip_val", 1.0)])
def test_manual_optimization_refuses_flags_it_would_ignore(flag, value):
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            self.manual_backward(self._loss(batch))
            opt.step()
            opt.zero_grad()

    with pytest.raises(MisconfigurationError, match=f"{flag} is not applied with manual optimization"):
        Trainer(accelerator="cpu", **QUIET, max_steps=1, **{flag: value}).fit(Manual(), regression_loader(16, 8))


# ---------------------------------------------------------------------------------------------------- Lightning's flags
def test_flags_read_back_as_lightning_reports_them(tmp_path, monkeypatch):
    trainer = Trainer(accelerator="cpu", **QUIET, fast_dev_run=1, num_sanity_val_steps=-1, default_root_dir="~/elsewhere")
    assert trainer.fast_dev_run is True and trainer.max_steps == 1 and trainer.num_sanity_val_steps == 0
    assert trainer.default_root_dir == os.path.expanduser("~/elsewhere")
    trainer = Trainer(accelerator="cpu", **QUIET, fast_dev_run=3, limit_train_batches=3.0, num_sanity_val_steps=-1)
    assert trainer.fast_dev_run == 3 and trainer.limit_val_batches == 3
    assert Trainer(accelerator="cpu", **QUIET, num_sanity_val_steps=-1).num_sanity_val_steps == math.inf
    assert Trainer(accelerator="cpu", **QUIET, limit_train_batches=3.0).limit_train_batches == 3
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "7")
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    assert Trainer(accelerator="cpu").max_steps == 7 and Trainer(accelerator="cpu").logger is None
    assert Trainer(accelerator="cpu", max_steps=3).max_steps == 3


def test_barebones_turns_off_what_costs_speed_and_refuses_it_back():
    trainer = Trainer(accelerator="cpu", barebones=True)
    assert not trainer.loggers and not trainer.checkpoint_callbacks and trainer.progress_bar_callback is None
    assert trainer.num_sanity_val_steps == 0 and trainer.log_every_n_steps == 0
    with pytest.raises(MisconfigurationError, match=r"`Trainer\(barebones=True, enable_checkpointing=True\)` was passed"):
        Trainer(accelerator="cpu", barebones=True, enable_checkpointing=True)
    with pytest.raises(MisconfigurationError, match=r"profiler='simple'\)` was passed"):
        Trainer(accelerator="cpu", barebones=True, profiler="simple")


def test_overfit_batches_trains_and_validates_on_the_same_unshuffled_batches():
    seen = {"train": [], "val": []}

    class Seen(BoringModel):
        def training_step(self, batch, batch_idx):
            seen["train"].append(batch[0][0, 0].item())
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen["val"].append(batch[0][0, 0].item())

    trainer = Trainer(accelerator="cpu", **QUIET, max_epochs=2, overfit_batches=2, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match="requested to overfit but enabled train dataloader shuffling"):
        trainer.fit(Seen(), regression_loader(64, 8, shuffle=True), regression_loader(64, 8))
    assert trainer.num_training_batches == 2 and trainer.num_val_batches == [2]
    first = regression_loader(64, 8).dataset.tensors[0][::8, 0].tolist()[:2]  # the unshuffled first batches
    assert seen["train"] == pytest.approx(first * 2) and seen["val"] == pytest.approx(first * 2)


def test_reload_dataloaders_every_n_epochs():
    asked = []

    class Reloads(BoringModel):
        def train_dataloader(self):
            asked.append(("train", self.current_epoch))
            return regression_loader(16, 8)

        def val_dataloader(self):
            asked.append(("val", self.current_epoch))
            return regression_loader(8, 8)

    Trainer(accelerator="cpu", **QUIET, max_epochs=4, reload_dataloaders_every_n_epochs=2, num_sanity_val_steps=0).fit(Reloads())
    assert asked == [("train", 0), ("val", 0), ("train", 2), ("val", 2)]
    with pytest.raises(MisconfigurationError, match="reload_dataloaders_every_n_epochs=-1: should be an int >= 0"):
        Trainer(accelerator="cpu", reload_dataloaders_every_n_epochs=-1)


def test_time_based_validation_and_max_time(monkeypatch):
    import torchplug._schedule
    import torchplug._training

    clock = [0.0]

    def tick():  # every reading of the clock is a second later: deterministic "time"
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(torchplug._schedule.time, "monotonic", tick)
    monkeypatch.setattr(torchplug._training.time, "monotonic", tick)
    trainer, model = fit(max_epochs=1, val_check_interval="00:00:00:02")
    assert trainer.val_check_interval == "00:00:00:02" and 0 < len(model.val_batches) < 8 * 4
    clock[0] = 0.0
    trainer, model = fit(max_epochs=10, max_time={"seconds": 5}, val=False)
    assert trainer.current_epoch == 1 and trainer.global_step == 5
    with pytest.raises(MisconfigurationError, match="invalid time format"):
        Trainer(accelerator="cpu", val_check_interval="1:2")


def test_inference_mode_and_detect_anomaly():
    modes = []

    class Checks(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

        def training_step(self, batch, batch_idx):
            modes.append(torch.is_anomaly_enabled())
            return super().training_step(batch, batch_idx)

    trainer = Trainer(accelerator="cpu", **QUIET, limit_val_batches=1)
    trainer.validate(Checks(), regression_loader(8, 8))
    Trainer(accelerator="cpu", **QUIET, limit_val_batches=1, inference_mode=False).validate(Checks(), regression_loader(8, 8))
    Trainer(accelerator="cpu", **QUIET, max_steps=1, detect_anomaly=True).fit(Checks(), regression_loader(8, 8))
    assert modes == [(True, False), (False, False), True] and not torch.is_anomaly_enabled()


def test_estimated_stepping_batches_in_configure_optimizers():
    estimates = []

    class Asks(BoringModel):
        def configure_optimizers(self):
            estimates.append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()

    for kwargs in ({"max_epochs": 3}, {"max_steps": 5}, {"max_epochs": 2, "accumulate_grad_batches": 3}):
        Trainer(accelerator="cpu", **QUIET, **kwargs).fit(Asks(), regression_loader(56, 8))
    assert estimates == [21, 5, 6]


def test_init_module_makes_the_model_in_the_precisions_dtype():
    with Trainer(accelerator="cpu", **QUIET, precision="64-true").init_module():
        model = BoringModel()
    assert model.layer.weight.dtype == torch.float64 and torch.get_default_dtype() == torch.float32


def test_default_root_dir_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    with pytest.raises(MisconfigurationError, match=rf"default_root_dir='{file}' is a file: it must be a folder"):
        Trainer(accelerator="cpu", **QUIET, default_root_dir=file)
    with pytest.raises(MisconfigurationError, match=rf"default_root_dir='{file}/runs' is inside '{file}', which is a file"):
        Trainer(accelerator="cpu", **QUIET, default_root_dir=file / "runs")
    Trainer(accelerator="cpu", **QUIET, default_root_dir=tmp_path / "new" / "folder")  # a folder that does not exist yet is fine
