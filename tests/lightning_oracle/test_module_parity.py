"""Module, DataModule and logging parity: one snippet, run on Lightning 2.6.6 and on torchplug, must agree.

The snippets are written for both frameworks (``pl`` is ``pytorch_lightning`` or ``torchplug``); each test compares
what they emit. Where torchplug deliberately differs, the test says so (docs/porting.md gives the reasons).
"""

from __future__ import annotations

from pathlib import Path

from ._oracle import run_both

# Shared by the snippets: deterministic data and a trainer with nothing a test does not look at.
COMMON = """
from torch.utils.data import DataLoader, TensorDataset

def loader(n=8, batch_size=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)

def trainer(**kwargs):
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)

def metrics(values):
    return {k: round(float(v), 5) for k, v in sorted(values.items())}

class Recorder(pl.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.calls, self.hparams = [], []
    @property
    def name(self):
        return "recorder"
    @property
    def version(self):
        return 0
    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams.append({k: params[k] for k in sorted(params)})
    def log_metrics(self, metrics, step=None):
        self.calls.append([step, {k: round(float(v), 5) for k, v in sorted(metrics.items())}])
"""


LOGGING = (
    COMMON
    + """
import torchmetrics

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.mean_metric = torchmetrics.MeanMetric()
        self.sum_metric = torchmetrics.SumMetric()
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("t_default", loss)
        self.log("t_both", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("t_epoch", loss, on_epoch=True, on_step=False)
        self.log("t_sum", 1.0, on_step=False, on_epoch=True, reduce_fx="SUM")
        self.log("t_max", float(batch_idx), on_step=False, on_epoch=True, reduce_fx=max)
        self.log("t_min", float(batch_idx), on_step=False, on_epoch=True, reduce_fx=torch.min)
        self.mean_metric(loss)
        self.log("t_metric", self.mean_metric, on_step=True, on_epoch=True)
        return loss
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("v_default", loss)
        self.log("v_both", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("v_step", loss, on_step=True, on_epoch=False)
        self.sum_metric.update(x.sum())
        self.log("v_metric", self.sum_metric)
    def on_train_epoch_start(self):
        self.log("te_start", 3.0)
    def on_train_epoch_end(self):
        self.log("te_end", 1.0)
    def on_validation_epoch_end(self):
        self.log("ve_end", 2.0)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

class Logs(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.log("from_callback", float(batch_idx), on_step=False, on_epoch=True)

def dump(t):
    return {
        "logged": metrics(t.logged_metrics),
        "callback": metrics(t.callback_metrics),
        "pbar": metrics(t.progress_bar_metrics),
        "logged_types": sorted({type(v).__name__ for v in t.logged_metrics.values()}),
        "callback_types": sorted({type(v).__name__ for v in t.callback_metrics.values()}),
    }

out = {}
for n in (1, 2):
    recorder = Recorder()
    t = trainer(max_epochs=2, logger=recorder, log_every_n_steps=2, callbacks=[Logs()])
    val = loader(6, 4) if n == 1 else [loader(6, 4), loader(4, 2, seed=1)]
    pl.seed_everything(1)
    model = Net()
    t.fit(model, loader(10, 4), val)
    out[f"fit{n}"] = dump(t)
    out[f"fit{n}_logger_calls"] = recorder.calls
    out[f"validate{n}"] = t.validate(model, val, verbose=False)
    out[f"validate{n}_state"] = dump(t)
emit(out)
"""
)


def test_self_log_names_values_and_what_reaches_the_loggers(tmp_path: Path) -> None:
    lightning, torchplug = run_both(LOGGING, tmp_path)
    for key in lightning:
        if key.endswith(("logger_calls",)) or key.startswith("validate") and not key.endswith("state"):
            assert torchplug[key] == lightning[key], key
            continue
        ours, theirs = torchplug[key], lightning[key]
        for part in ("logged", "callback", "logged_types", "callback_types"):
            assert ours[part] == theirs[part], (key, part)
        # The same keys and values; Lightning's progress_bar_metrics hold floats (checked by the trainer's tests).
        assert ours["pbar"] == theirs["pbar"], key


HPARAMS = (
    COMMON
    + """
import argparse, os, yaml

class Base(pl.LightningModule):
    def __init__(self, hidden=3):
        super().__init__()
        self.layer = torch.nn.Linear(4, hidden)
        self.head = torch.nn.Linear(hidden, 1)
    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.layer(x)), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.get("lr", 0.1))

class Net(Base):
    def __init__(self, hidden=3, lr=0.1, name="net", **kwargs):
        super().__init__(hidden)
        self.save_hyperparameters(ignore="name")

class Sub(Net):
    def __init__(self, extra=1, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()

class FromNamespace(Base):
    def __init__(self, config):
        self.given = type(config).__name__  # when loaded from a checkpoint: a dict
        super().__init__(hidden=config["hidden"] if isinstance(config, dict) else config.hidden)
        self.save_hyperparameters(config)

class Named(Net):
    def __init__(self, a=1, b=2, c=3):
        super().__init__()
        self.save_hyperparameters("a", "c", logger=False)

class Data(pl.LightningDataModule):
    def __init__(self, batch_size=2, seed=0):
        super().__init__()
        self.save_hyperparameters()
    def train_dataloader(self):
        return loader(8, self.hparams.batch_size, self.hparams.seed)

def describe(obj):
    return {"type": type(obj.hparams).__name__, "hparams": dict(obj.hparams),
            "initial": dict(obj.hparams_initial), "initial_type": type(obj.hparams_initial).__name__}

out = {}
pl.seed_everything(0)
sub = Sub(extra=7, hidden=5, name="x")
sub.hparams.lr = 0.05  # changed at run time: hparams_initial keeps 0.1
out["sub"] = describe(sub)
out["sub_attr"] = [sub.hparams.extra, sub.hparams["hidden"]]
out["namespace"] = describe(FromNamespace(argparse.Namespace(hidden=2, tag="t")))
out["named"] = describe(Named(a=10, b=20))
data = Data(batch_size=4)
out["data"] = describe(data)
try:
    Net().save_hyperparameters(5)
except Exception as err:
    out["primitive_error"] = type(err).__name__

recorder = Recorder()
t = trainer(max_epochs=1, logger=recorder)
t.fit(sub, datamodule=data)
out["logged_hparams"] = recorder.hparams
path = os.path.abspath("model.ckpt")
t.save_checkpoint(path)
raw = torch.load(path, weights_only=True)
out["checkpoint"] = {k: raw.get(k) for k in ("hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
                                             "datamodule_hparams_name")}

loaded = Sub.load_from_checkpoint(path, extra=9)
out["loaded"] = describe(loaded)
out["loaded_weights_equal"] = all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                     sub.state_dict().values()))
out["loaded_training"] = loaded.training
out["data_loaded"] = describe(Data.load_from_checkpoint(path))
try:
    sub.load_from_checkpoint(path)
except Exception as err:
    out["on_instance"] = type(err).__name__

ns_model = FromNamespace(argparse.Namespace(hidden=2, tag="t"))
t2 = trainer(max_steps=1)
t2.fit(ns_model, loader())
t2.save_checkpoint("ns.ckpt")
ns_loaded = FromNamespace.load_from_checkpoint("ns.ckpt")
out["namespace_loaded"] = [describe(ns_loaded), ns_loaded.given]
out["namespace_checkpoint_name"] = torch.load("ns.ckpt", weights_only=True).get("hparams_name")

csv = pl.loggers.CSVLogger(os.path.abspath("logs"), name="run")
t3 = trainer(max_steps=1, logger=csv)
t3.fit(Named(a=4), loader())  # logger=False: nothing sent to the logger
t4 = trainer(max_steps=1, logger=pl.loggers.CSVLogger(os.path.abspath("logs"), name="run2"))
t4.fit(Sub(extra=3), loader())
with open(os.path.join(t4.logger.log_dir, "hparams.yaml")) as f:
    out["hparams_yaml"] = yaml.safe_load(f)
out["named_yaml_exists"] = os.path.exists(os.path.join(csv.log_dir, "hparams.yaml"))
emit(out)
"""
)


def test_hyperparameters_checkpoints_and_loggers(tmp_path: Path) -> None:
    lightning, torchplug = run_both(HPARAMS, tmp_path)
    assert torchplug == lightning


STEPS = (
    COMMON
    + """
calls = []

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.eval()
    def training_step(self, batch):  # no batch_idx: called with the batch only
        calls.append(["train", self.training, self.frozen.training, self.trainer.model.training])
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        calls.append(["val", dataloader_idx, self.training, self.trainer.model.training])
    def test_step(self, batch, batch_idx):
        calls.append(["test", batch_idx, self.training])
    def predict_step(self, batch):
        calls.append(["predict", self.training])
        return self.layer(batch[0])
    def on_validation_start(self):
        calls.append(["on_validation_start", self.trainer.model.training])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def modes(model):
    return {name or "root": m.training for name, m in model.named_modules()}

out = {}
model = Net()
t = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
t.fit(model, loader(), [loader(), loader()])
t.validate(model, loader(), verbose=False)
t.test(model, loader(), verbose=False)
t.predict(model, loader())
out["calls"] = calls
out["modes_after"] = modes(model)

def error_of(run):
    try:
        run()
    except Exception as err:  # torchplug names Lightning's MisconfigurationException MisconfigurationError
        name = type(err).__name__.replace("MisconfigurationException", "MisconfigurationError")
        # torchplug's ConflictError/ArgumentTypeError are the RuntimeError/TypeError Lightning raises (and also
        # MisconfigurationErrors): compared as the class Lightning's callers catch
        name = {"ConflictError": "RuntimeError", "ArgumentTypeError": "TypeError"}.get(name, name)
        return [name, "dataloader_idx" in str(err) or "training_step" in str(err)]
    return None

class NeedsIndex(Net):
    def validation_step(self, batch, batch_idx, dataloader_idx):
        pass

class NoIndex(Net):
    def validation_step(self, batch, batch_idx):
        pass

out["single_loader_requires_index"] = error_of(lambda: trainer(max_steps=1).validate(NeedsIndex(), loader()))
out["several_loaders_no_index"] = error_of(lambda: trainer(max_steps=1).validate(NoIndex(), [loader(), loader()]))

calls.clear()
no_val = Net()
no_val.validation_step = None  # on the instance: no validation, as if it were not implemented
trainer(max_epochs=1, limit_train_batches=1).fit(no_val, loader(), loader())
out["validation_step_none"] = sorted({c[0] for c in calls})

no_train = Net()
no_train.training_step = None
out["training_step_none"] = error_of(lambda: trainer(max_steps=1).fit(no_train, loader()))

class CustomEval(Net):
    def on_validation_model_eval(self):
        calls.append(["custom_eval"])
        self.layer.eval()
    def on_validation_model_train(self):
        calls.append(["custom_train"])
        self.layer.train()

calls.clear()
trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(CustomEval(), loader(), loader())
out["custom_eval_calls"] = calls

calls.clear()
instance = Net()
instance.on_train_epoch_end = lambda: calls.append(["instance_hook"])
callback = pl.Callback()
callback.on_train_start = lambda trainer, module: calls.append(["instance_callback_hook"])
trainer(max_epochs=1, limit_train_batches=1, callbacks=[callback]).fit(instance, loader())
out["instance_hooks"] = [c for c in calls if c[0].startswith("instance")]
emit(out)
"""
)


def test_steps_by_signature_none_steps_instance_hooks_and_train_eval_modes(tmp_path: Path) -> None:
    lightning, torchplug = run_both(STEPS, tmp_path)
    assert torchplug == lightning


MEMBERS = (
    COMMON
    + """
import io, contextlib

class Gan(pl.LightningModule):
    \"\"\"Two optimizers stepped by hand, as in a GAN (not Lightning's example: a tiny one of our own).\"\"\"
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = torch.nn.Linear(2, 4)
        self.discriminator = torch.nn.Linear(4, 1)
        self.example_input_array = torch.zeros(3, 2)
        self.seen = []
    def forward(self, z):
        return self.generator(z)
    def training_step(self, batch):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 2)
        with self.toggled_optimizer(opt_g):
            self.seen.append([p.requires_grad for p in self.parameters()])
            g_loss = -self.discriminator(self(z)).mean()
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
        self.seen.append([p.requires_grad for p in self.parameters()])
        self.toggle_optimizer(opt_d)
        d_loss = self.discriminator(self(z).detach()).mean() - self.discriminator(real).mean()
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})
        if self.global_step == 0:
            self.print("printed once", [type(x).__name__ for x in self.loggers])
            self.seen.append(list(self.all_gather(torch.ones(2, 3)).shape))
    def configure_optimizers(self):
        return (torch.optim.SGD(self.generator.parameters(), lr=0.05),
                torch.optim.SGD(self.discriminator.parameters(), lr=0.05))

out = {}
pl.seed_everything(3)
model = Gan()
recorder = Recorder()
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    t = trainer(max_epochs=2, logger=recorder, log_every_n_steps=1)
    t.fit(model, loader(8, 4))
out["printed"] = [line for line in printed.getvalue().splitlines() if line.startswith("printed once")]
out["global_step"] = t.global_step
out["logged"] = metrics(t.logged_metrics)
out["logger_calls"] = recorder.calls
out["requires_grad_seen"] = model.seen[:3]
out["weights"] = round(float(sum(p.sum() for p in model.parameters())), 4)

scripted = model.to_torchscript()
z = torch.randn(3, 2)
out["torchscript_matches"] = torch.allclose(scripted(z), model(z))
out["example_input_array"] = list(model.example_input_array.shape)

model.freeze()
out["frozen"] = [model.training, any(p.requires_grad for p in model.parameters())]
model.unfreeze()
out["unfrozen"] = [model.training, all(p.requires_grad for p in model.parameters())]
emit(out)
"""
)


def test_manual_optimization_gan_and_module_members(tmp_path: Path) -> None:
    lightning, torchplug = run_both(MEMBERS, tmp_path)
    assert torchplug == lightning
