"""LightningCLI (torchplug.cli): real fits, validates and predicts driven by argument lists, config files and dicts."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from torchplug import Callback, LightningDataModule, LightningModule, MisconfigurationError
from torchplug.cli import (
    LightningArgumentParser,
    LightningCLI,
    OptimizerCallable,
    ReduceLROnPlateau,
    SaveConfigCallback,
    instantiate_class,
)

QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "logger": False}


class Net(LightningModule):
    """A linear regression."""

    def __init__(self, features: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class WideNet(Net):
    """A Net with a hidden layer (chosen by class name on the command line)."""

    def __init__(self, features: int = 4, hidden: int = 3, lr: float = 0.05) -> None:
        super().__init__(features=features, lr=lr)
        self.layer = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.Linear(hidden, 1))


class OptimizerNet(Net):
    """Builds the optimizer the user configures (``--model.optimizer=Adam``)."""

    def __init__(self, optimizer: OptimizerCallable = torch.optim.SGD, features: int = 4) -> None:
        super().__init__(features=features)
        self.optimizer = optimizer

    def configure_optimizers(self):
        return self.optimizer(self.parameters())


class Data(LightningDataModule):
    def __init__(self, features: int = 4, batch_size: int = 4, size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(0)
        self.dataset = TensorDataset(torch.randn(size, features, generator=generator), torch.randn(size, 1))
        self.batch_size = batch_size
        self.features = features

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)


def cli(*args: str, **kwargs) -> LightningCLI:
    kwargs.setdefault("trainer_defaults", QUIET)
    kwargs.setdefault("args", list(args))
    return LightningCLI(kwargs.pop("model_class", Net), kwargs.pop("datamodule_class", Data), **kwargs)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # a pytest command line is not the CLI's
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)


def test_fit_from_args_trains_and_saves_a_config_that_reproduces_the_run(tmp_path):
    run = cli("fit", "--model.lr=0.5", "--data.batch_size=8", "--trainer.max_epochs=2", "--seed_everything=7")
    assert run.subcommand == "fit"
    assert run.model.hparams.lr == 0.5 and run.datamodule.batch_size == 8
    assert run.trainer.global_step == 4  # 16 samples / 8 per batch * 2 epochs
    assert run.trainer.state.finished

    saved = tmp_path / "config.yaml"  # the log folder: default_root_dir without a logger
    config = yaml.safe_load(saved.read_text())
    assert config["model"] == {"features": 4, "lr": 0.5}
    assert config["data"]["batch_size"] == 8 and config["trainer"]["max_epochs"] == 2
    assert config["seed_everything"] == 7

    again = cli("fit", "--config", str(saved), "--trainer.max_epochs=1", save_config_callback=None)
    assert again.model.hparams.lr == 0.5 and again.datamodule.batch_size == 8
    assert again.trainer.max_epochs == 1 and again.trainer.global_step == 2


def test_ckpt_path_fills_the_models_arguments_from_the_checkpoint(tmp_path):
    fitted = cli("fit", "--model.lr=0.5", "--model.features=4", "--trainer.max_epochs=1")
    path = tmp_path / "fitted.ckpt"
    fitted.trainer.save_checkpoint(path)
    tested = cli("test", f"--ckpt_path={path}", save_config_callback=None)  # no --model.lr: the default is 0.05
    assert tested.model.hparams.lr == 0.5
    torch.testing.assert_close(tested.model.layer.weight, fitted.model.layer.weight)


def test_evaluation_subcommand_runs_its_trainer_method_between_the_hooks():
    subcommand = "test"
    calls = []

    class RecordingCLI(LightningCLI):
        def before_instantiate_classes(self):
            calls.append("before_instantiate_classes")

        def after_instantiate_classes(self):
            calls.append("after_instantiate_classes")

        def __getattr__(self, name):
            if name.startswith(("before_", "after_")):
                return lambda: calls.append(name)
            raise AttributeError(name)

    run = RecordingCLI(Net, Data, args=[subcommand], trainer_defaults=QUIET, save_config_callback=None)
    assert calls == ["before_instantiate_classes", "after_instantiate_classes", f"before_{subcommand}",
                     f"after_{subcommand}"]  # fmt: skip
    assert run.trainer.state.fn.value == "test"
    assert "test_loss" in run.trainer.callback_metrics and run.trainer.global_step == 0


def test_print_config_prints_the_full_config_and_exits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--model.features=5", "--print_config")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("# torchplug==")
    config = yaml.safe_load(text)
    assert config["model"]["features"] == 5
    assert config["trainer"]["accelerator"] == "cpu"  # trainer_defaults are the defaults
    assert "max_epochs" in config["trainer"] and config["ckpt_path"] is None


def test_run_false_builds_the_classes_from_a_dict_without_running():
    run = cli(run=False, args={"model": {"lr": 0.2}, "trainer": {"max_steps": 3}, "seed_everything": False})
    assert run.subcommand is None
    assert isinstance(run.model, Net) and run.model.hparams.lr == 0.2
    assert run.trainer.max_steps == 3 and run.trainer.global_step == 0
    run.trainer.fit(run.model, datamodule=run.datamodule)
    assert run.trainer.global_step == 3


def test_subclass_mode_and_callbacks_by_class_name():
    run = cli(
        "fit", "--model=WideNet", "--model.hidden=6", "--trainer.max_epochs=1", "--trainer.callbacks=EarlyStopping",
        "--trainer.callbacks.monitor=val_loss", subclass_mode_model=True,
    )  # fmt: skip
    from torchplug.callbacks import EarlyStopping

    assert type(run.model) is WideNet
    assert run.model.layer[0].out_features == 6
    assert run.config.fit.model.class_path.endswith(".WideNet")
    assert [c.monitor for c in run.trainer.callbacks if isinstance(c, EarlyStopping)] == ["val_loss"]
    seed = run.config.fit.seed_everything  # True by default: a random seed, written back
    assert isinstance(seed, int) and not isinstance(seed, bool)
    assert yaml.safe_load(open("config.yaml"))["seed_everything"] == seed


def test_optimizer_and_lr_scheduler_arguments_configure_the_model():
    with pytest.warns(UserWarning, match="Net.configure_optimizers` will be overridden"):
        run = cli(
            "fit", "--optimizer=Adam", "--optimizer.lr=0.01", "--lr_scheduler=StepLR", "--lr_scheduler.step_size=1",
            "--lr_scheduler.gamma=0.5", "--trainer.max_epochs=2",
        )  # fmt: skip
    (optimizer,) = run.trainer.optimizers
    assert isinstance(optimizer, torch.optim.Adam)
    (scheduler,) = run.trainer.lr_schedulers
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)  # stepped once per epoch


def test_reduce_lr_on_plateau_monitors_the_metric_it_names():
    run = cli(
        "fit", "--optimizer=SGD", "--optimizer.lr=0.1", "--lr_scheduler=ReduceLROnPlateau",
        "--lr_scheduler.monitor=val_loss", "--trainer.max_epochs=1",
    )  # fmt: skip
    (config,) = run.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, ReduceLROnPlateau) and config.monitor == "val_loss"


def test_torchs_own_reduce_lr_on_plateau_is_refused_with_the_way_to_name_a_monitor():
    with pytest.raises(MisconfigurationError, match=r"torch's ReduceLROnPlateau does not say.*--lr_scheduler.monitor"):
        cli("fit", "--optimizer=SGD", "--optimizer.lr=0.1",
            "--lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau", "--trainer.max_epochs=1")  # fmt: skip


def test_optimizer_callable_in_the_model_signature():
    run = cli("fit", "--model.optimizer=Adam", "--model.optimizer.lr=0.02", "--trainer.max_steps=1",
              model_class=OptimizerNet)  # fmt: skip
    (optimizer,) = run.trainer.optimizers
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.02


def test_add_arguments_to_parser_links_and_adds_callbacks():
    seen = []

    class Recorder(Callback):
        def __init__(self, label: str = "default") -> None:
            self.label = label

        def on_train_start(self, trainer, pl_module):
            seen.append(self.label)

    class LinkedCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.link_arguments("data.features", "model.features")
            parser.add_lightning_class_args(Recorder, "recorder")

    run = LinkedCLI(Net, Data, args=["fit", "--data.features=6", "--recorder.label=hi", "--trainer.max_steps=1"],
                    trainer_defaults=QUIET)  # fmt: skip
    assert run.model.layer.in_features == 6
    assert seen == ["hi"]


def test_save_config_callback_refuses_to_overwrite_unless_asked(tmp_path):
    cli("fit", "--trainer.max_steps=1")
    with pytest.raises(RuntimeError, match="Aborting to avoid overwriting"):
        cli("fit", "--trainer.max_steps=1")
    cli("fit", "--trainer.max_steps=1", "--model.lr=0.9", save_config_kwargs={"overwrite": True})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["lr"] == 0.9


def test_save_config_callback_subclass_saves_elsewhere(tmp_path):
    saved = []

    class ToList(SaveConfigCallback):
        def save_config(self, trainer, pl_module, stage):
            saved.append(self.parser.dump(self.config, skip_none=False))

    cli(
        "fit",
        "--trainer.max_steps=1",
        save_config_callback=ToList,
        save_config_kwargs={"save_to_log_dir": False},
    )
    assert len(saved) == 1 and "max_steps: 1" in saved[0]
    assert not (tmp_path / "config.yaml").exists()
    with pytest.raises(ValueError, match="save_to_log_dir=False"):
        SaveConfigCallback(LightningArgumentParser(), {}, save_to_log_dir=False)


def test_bad_input_is_refused_early():
    with pytest.raises(ValueError, match="class_path"):
        instantiate_class((), {"init_args": {}})
    with pytest.raises(TypeError, match="seed_everything_default"):
        LightningCLI(Net, Data, args=[], seed_everything_default="yes")
    with pytest.raises(TypeError, match="add_optimizer_args"):
        LightningArgumentParser().add_optimizer_args(torch.nn.Linear)
    with pytest.raises(SystemExit):  # jsonargparse reports the unknown option and exits with status 2
        cli("fit", "--trainer.no_such_flag=1")
    assert isinstance(instantiate_class([torch.zeros(1, requires_grad=True)],
                                        {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}), torch.optim.SGD)  # fmt: skip


def test_without_jsonargparse_the_error_names_the_extra(monkeypatch):
    """jsonargparse is installed here, so its absence is simulated: a None in sys.modules makes it unimportable."""
    monkeypatch.setitem(sys.modules, "jsonargparse", None)
    monkeypatch.delitem(sys.modules, "torchplug._lightning_cli")
    import torchplug.cli

    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchplug\[cli\]'"):
        torchplug.cli.LightningCLI  # noqa: B018
    assert callable(torchplug.cli.main)  # the torchplug command does not need it


def test_load_from_checkpoint_rebuilds_injected_objects_from_the_recorded_config(tmp_path):
    run = cli("fit", "--model.optimizer=Adam", "--model.optimizer.lr=0.03", "--trainer.max_steps=1",
              "--trainer.enable_checkpointing=true", model_class=OptimizerNet)  # fmt: skip
    hparams = dict(run.model.hparams)
    assert hparams["_instantiator"] == "torchplug.cli.instantiate_module"
    assert (
        hparams["optimizer"]["class_path"] == "torch.optim.Adam"
    )  # plain config data, not a function object
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")

    loaded = OptimizerNet.load_from_checkpoint(path)
    optimizer = loaded.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.03
    torch.testing.assert_close(loaded.layer.weight, run.model.layer.weight)

    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(checkpoint, tmp_path / "tampered.ckpt")
    with pytest.raises(MisconfigurationError, match="_instantiator='os.system'"):
        OptimizerNet.load_from_checkpoint(tmp_path / "tampered.ckpt")


def test_any_model_and_data_by_class_path_log_their_hyperparameters_without_the_class(tmp_path):
    run = LightningCLI(
        # full class paths: other test modules of the session define classes named Net too
        args=["fit", f"--model={__name__}.Net", "--model.lr=0.2", f"--data={__name__}.Data", "--data.batch_size=8",
              "--trainer.max_steps=1", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}"],
        trainer_defaults={**QUIET, "logger": True},
    )  # fmt: skip
    assert run.model.hparams["_class_path"].endswith(".Net")
    assert run.datamodule.hparams["_class_path"].endswith(".Data")  # differs from the model's: not a clash
    logged = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert logged == {"features": 4, "lr": 0.2, "batch_size": 8, "size": 16,
                      "_instantiator": "torchplug.cli.instantiate_module"}  # fmt: skip
