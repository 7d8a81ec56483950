"""WandbLogger against a stand-in ``wandb`` module: the run's arguments, metrics, config, media, checkpoints as
artifacts after a real fit, pickling, and the errors."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.callbacks import ModelCheckpoint
from torchplug.loggers import WandbLogger


class _Run:
    """What ``wandb.init`` returns, reduced to what a logger uses: ``id``, ``name``, ``config.update``, ``log``,
    ``define_metric``, ``watch``, ``log_artifact``, ``use_artifact``; every call is recorded."""

    def __init__(self, **init: Any) -> None:
        self.init = init
        self.id = init.get("id") or "run-1"
        self.name = init.get("name") or "bright-sun-1"
        self.rows: list[dict[str, Any]] = []
        self.config_updates: list[tuple[dict[str, Any], bool]] = []
        self.metric_definitions: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.watched: list[tuple[Any, dict[str, Any]]] = []
        self.artifacts: list[tuple[_Artifact, list[str]]] = []
        self.config = types.SimpleNamespace(
            update=lambda d, allow_val_change=False: self.config_updates.append((d, allow_val_change))
        )

    def log(self, data: dict[str, Any]) -> None:
        self.rows.append(dict(data))

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        self.metric_definitions.append((args, kwargs))

    def watch(self, model: Any, **kwargs: Any) -> None:
        self.watched.append((model, kwargs))

    def log_artifact(self, artifact: _Artifact, aliases: list[str]) -> None:
        self.artifacts.append((artifact, aliases))


class _Artifact:
    def __init__(self, name: str, type: str, metadata: dict[str, Any] | None = None) -> None:
        self.name, self.type, self.metadata = name, type, metadata
        self.files: list[tuple[str, str, str]] = []

    def add_file(self, local_path: str, name: str | None = None, policy: str = "mutable") -> None:
        assert os.path.isfile(local_path)
        self.files.append((local_path, name, policy))


class _Media:
    def __init__(self, data: Any, **kwargs: Any) -> None:
        self.data, self.kwargs = data, kwargs


@pytest.fixture
def wandb(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for the ``wandb`` package, which is not installed here and would talk to a server: the module-level
    functions and classes of wandb's public API that WandbLogger calls (``init``, ``run``, ``Artifact``, ``Image``,
    ``Audio``, ``Video``, ``Table``, ``Api``), with wandb's signatures, recording what they receive."""
    module = types.ModuleType("wandb")
    module.run = None
    module.runs = []

    def init(**kwargs: Any) -> _Run:
        run = _Run(**kwargs)
        module.runs.append(run)
        module.run = run
        return run

    module.init = init
    module.Artifact = _Artifact
    module.Image = module.Audio = module.Video = _Media
    module.Table = lambda columns=None, data=None, dataframe=None: ("table", columns, data, dataframe)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return module


def test_run_arguments_metrics_and_config(wandb: types.ModuleType, tmp_path: Path) -> None:
    logger = WandbLogger(
        name="first", save_dir=tmp_path, version="abc", project="proj", entity="team", prefix="train"
    )
    assert wandb.runs == []  # no run before it is used
    assert (logger.name, logger.version, logger.save_dir) == ("proj", "abc", str(tmp_path))
    logger.log_metrics({"loss": 0.5}, step=3)
    (run,) = wandb.runs
    assert run.init == {"name": "first", "project": "proj", "dir": str(tmp_path), "id": "abc", "resume": "allow",
                        "anonymous": None, "entity": "team"}  # fmt: skip
    assert run.rows == [{"train-loss": 0.5, "trainer/global_step": 3}]
    # the trainer's step is the x-axis of every metric
    assert run.metric_definitions == [(("trainer/global_step",), {}),
                                      (("*",), {"step_metric": "trainer/global_step", "step_sync": True})]  # fmt: skip
    logger.log_metrics({"loss": 0.25})
    assert run.rows[-1] == {"train-loss": 0.25}

    logger.log_hyperparams(
        {"lr": 0.1, "path": Path("data"), "layer": nn.Linear, "nested": {"t": torch.tensor(2)}}
    )
    assert run.config_updates == [({"lr": 0.1, "path": "data", "layer": "Linear", "nested": {"t": 2}}, True)]
    logger.watch("model", log="all", log_freq=10)
    assert run.watched == [("model", {"log": "all", "log_freq": 10, "log_graph": True})]

    # a second logger while a run is in progress reuses it, with a warning
    with pytest.warns(UserWarning, match="wandb run already in progress"):
        assert WandbLogger().experiment is run
    assert len(wandb.runs) == 1


def test_defaults_env_project_offline_and_anonymous(
    wandb: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WandbLogger().name == "lightning_logs"
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    logger = WandbLogger(offline=True, anonymous=True, sync_tensorboard=True)
    assert logger.name == "from-env"
    run = logger.experiment
    assert os.environ["WANDB_MODE"] == "dryrun"
    assert run.init["anonymous"] == "allow" and run.init["dir"] == "."
    assert run.metric_definitions == [(("*",), {"step_metric": "global_step"})]  # TensorBoard's step, synced
    logger.log_metrics({"a": 1.0}, step=2)
    assert run.rows == [{"a": 1.0}]


def test_media(wandb: types.ModuleType) -> None:
    logger = WandbLogger()
    logger.log_image("samples", ["1.png", "2.png"], step=4, caption=["one", "two"])
    logger.log_text("text", columns=["a"], data=[["x"]])
    (run,) = wandb.runs
    images = run.rows[0]["samples"]
    assert [(i.data, i.kwargs) for i in images] == [
        ("1.png", {"caption": "one"}),
        ("2.png", {"caption": "two"}),
    ]
    assert run.rows[0]["trainer/global_step"] == 4
    assert run.rows[1] == {"text": ("table", ["a"], [["x"]], None)}
    with pytest.raises(TypeError, match='Expected a list as "audios"'):
        logger.log_audio("a", "1.wav")
    with pytest.raises(ValueError, match="Expected 2 items but only found 1 for fps"):
        logger.log_video("v", ["1.mp4", "2.mp4"], fps=[4])


def test_errors_name_the_fix(wandb: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchplug import MisconfigurationError

    with pytest.raises(MisconfigurationError, match="cannot be uploaded in offline mode"):
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(ValueError, match=r"log_model='best'.*True, False or 'all'"):
        WandbLogger(log_model="best")
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install wandb"):
        WandbLogger()


def test_other_ranks_get_a_dummy_experiment(wandb: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchplug.loggers import DummyExperiment
    from torchplug.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = WandbLogger(version="abc")
    assert isinstance(logger.experiment, DummyExperiment)
    logger.log_metrics({"a": 1.0}, step=0)
    assert pickle.loads(pickle.dumps(logger)).version == "abc"
    assert wandb.runs == []  # one run per training, made by rank 0 only


def test_pickled_logger_resumes_the_same_run(wandb: types.ModuleType) -> None:
    logger = WandbLogger(project="p")
    copy = pickle.loads(pickle.dumps(logger))  # a run is created before pickling, to be resumed by id
    (run,) = wandb.runs
    wandb.run = None  # as in a freshly spawned process
    assert copy.experiment is not run and copy.experiment.init["id"] == run.id
    assert copy.experiment.init["resume"] == "allow"


class _Regression(torchplug.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.seen_version: Any = None

    def setup(self, stage: str) -> None:
        self.seen_version = self.logger.version  # the run exists before the setup hooks

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(tmp_path: Path, logger: WandbLogger, **checkpoint: Any) -> torchplug.Trainer:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    trainer = torchplug.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=logger, max_epochs=3, log_every_n_steps=1,
        callbacks=[ModelCheckpoint(**checkpoint)], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    model = _Regression()
    trainer.fit(model, data, data)
    assert model.seen_version == "run-1"
    return trainer


def test_fit_uploads_the_checkpoints_when_the_run_succeeds(wandb: types.ModuleType, tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=tmp_path, project="proj", log_model=True)
    trainer = _fit(tmp_path, logger, monitor="val_loss", save_top_k=2)
    (run,) = wandb.runs
    # checkpoints go to Lightning's folder for a logger without a run folder: <save_dir>/<project>/<run id>
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "proj" / "run-1" / "checkpoints")
    assert trainer.log_dir == str(tmp_path)
    assert [row["trainer/global_step"] for row in run.rows if "train_loss" in row] == [0, 1, 2, 3, 4, 5]
    # log_model=True: the top 2 files, uploaded once at the end, oldest first; the best one also aliased "best"
    callback = trainer.checkpoint_callback
    uploaded = [(a.files[0][0], aliases) for a, aliases in run.artifacts]
    assert sorted(p for p, _ in uploaded) == sorted(callback.best_k_models)
    assert dict(uploaded)[callback.best_model_path] == ["latest", "best"]
    artifact = run.artifacts[0][0]
    assert (artifact.name, artifact.type, artifact.files[0][1:]) == (
        "model-run-1",
        "model",
        ("model.ckpt", "mutable"),
    )
    assert artifact.metadata["ModelCheckpoint"] == {
        "monitor": "val_loss", "mode": "min", "save_last": None, "save_top_k": 2, "save_weights_only": False,
        "_every_n_train_steps": 0,
    }  # fmt: skip
    assert isinstance(artifact.metadata["score"], float)
    assert artifact.metadata["original_filename"] == Path(artifact.files[0][0]).name


def test_log_model_all_uploads_each_checkpoint_as_written(wandb: types.ModuleType, tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=tmp_path, log_model="all", checkpoint_name="my-model")
    _fit(tmp_path, logger, save_top_k=-1, every_n_epochs=1)
    (run,) = wandb.runs
    names = [Path(a.files[0][0]).name for a, _ in run.artifacts]
    assert names == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt"]
    assert {a.name for a, _ in run.artifacts} == {"my-model"}


def test_failed_run_uploads_nothing(wandb: types.ModuleType, tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=tmp_path, log_model=True)
    callback = types.SimpleNamespace(
        save_top_k=1, best_model_path=str(tmp_path / "x.ckpt"), best_model_score=None
    )
    (tmp_path / "x.ckpt").write_bytes(b"weights")
    logger.after_save_checkpoint(callback)
    _ = logger.experiment
    logger.finalize("failed")
    assert wandb.runs[0].artifacts == []
    logger.finalize("success")
    assert [aliases for _, aliases in wandb.runs[0].artifacts] == [["latest", "best"]]
    logger.finalize("success")  # an unchanged file is not uploaded twice
    assert len(wandb.runs[0].artifacts) == 1
