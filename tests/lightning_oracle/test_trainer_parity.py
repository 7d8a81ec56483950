"""Trainer, loop, data and callback parity: one snippet, run on Lightning 2.6.6 and on torchplug, must agree.

Each snippet is written once for both frameworks (``pl`` is ``pytorch_lightning`` or ``torchplug``) and several
checks share one snippet, since every run starts two interpreters. Where torchplug deliberately differs, the test
says so (docs/porting.md gives the reasons).
"""

from __future__ import annotations

from pathlib import Path

from ._oracle import run_both

COMMON = """
import os, warnings
from torch.utils.data import DataLoader, TensorDataset

def data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True))

def loader(n=8, batch_size=2, seed=0, **kwargs):
    return DataLoader(data(n, seed), batch_size=batch_size, **kwargs)

def trainer(**kwargs):
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)

class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def forward(self, x):
        return self.layer(x)
    def loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)
    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("loss", loss)
        return loss
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))
    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.loss(batch))
    def predict_step(self, batch, batch_idx):
        return self(batch[0])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

def weights(module):
    return [round(float(v), 5) for p in module.parameters() for v in p.detach().flatten()]

def state(t):
    return [str(t.state.fn), str(t.state.status), str(t.state.stage)]

def caught(function):
    # What users can catch: the builtin classes the error is, and whether it is the framework's
    # MisconfigurationException (torchplug: MisconfigurationError, its rename).
    try:
        function()
    except Exception as err:
        names = {c.__name__ for c in type(err).__mro__}
        builtins = [n for n in ("TypeError", "ValueError", "RuntimeError", "FileNotFoundError") if n in names]
        return [builtins, bool(names & {"MisconfigurationException", "MisconfigurationError"})]
    return None

def where(path):
    return path.replace(os.getcwd(), "<cwd>").replace(os.path.expanduser("~"), "<home>")
"""

HOOKS = (
    COMMON
    + """
calls = []

class Recorder(pl.Callback):
    pass

class Traced(Net):
    pass

# Every hook the two share, recorded with the trainer's state while it runs (module hooks and callback hooks).
MODULE_HOOKS = [
    "configure_callbacks", "prepare_data", "setup", "configure_model", "configure_optimizers", "on_fit_start",
    "on_train_start", "on_train_epoch_start", "on_train_batch_start", "on_before_zero_grad", "on_before_backward",
    "on_after_backward", "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad", "on_validation_start",
    "on_validation_epoch_start", "on_validation_batch_start", "on_validation_batch_end", "on_validation_epoch_end",
    "on_validation_end", "on_test_model_eval", "on_test_model_train", "on_test_start", "on_test_epoch_start",
    "on_test_batch_start", "on_test_batch_end", "on_test_epoch_end", "on_test_end", "on_predict_model_eval",
    "on_predict_start", "on_predict_epoch_start", "on_predict_batch_start", "on_predict_batch_end",
    "on_predict_epoch_end", "on_predict_end", "on_train_end", "on_fit_end", "teardown", "train_dataloader",
    "val_dataloader", "test_dataloader", "predict_dataloader",
]
CALLBACK_HOOKS = [
    "setup", "on_fit_start", "on_sanity_check_start", "on_sanity_check_end", "on_train_start",
    "on_train_epoch_start", "on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_train_batch_end", "on_train_epoch_end", "on_validation_start",
    "on_validation_epoch_start", "on_validation_batch_start", "on_validation_batch_end", "on_validation_epoch_end",
    "on_validation_end", "on_test_start", "on_test_end", "on_predict_start", "on_predict_end", "on_train_end",
    "on_fit_end", "teardown",
]

def traced(owner, name, trainer_of):
    original = getattr(owner, name)
    def hook(self, *args, **kwargs):
        t = trainer_of(self, args)
        where = (str(t.state.stage), t.training, t.sanity_checking, t.validating) if t is not None else None
        calls.append([("M." if owner is Traced else "C.") + name, where])
        return original(self, *args, **kwargs)
    setattr(owner, name, hook)

for name in MODULE_HOOKS:
    traced(Traced, name, lambda self, args: self._trainer)
for name in CALLBACK_HOOKS:
    traced(Recorder, name, lambda self, args: args[0])

Traced.train_dataloader = lambda self: loader(6)
Traced.val_dataloader = lambda self: loader(4)
Traced.test_dataloader = lambda self: loader(4)
Traced.predict_dataloader = lambda self: loader(4)
out = {}
pl.seed_everything(0)
model = Traced()
t = trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=1, callbacks=[Recorder()],
            val_check_interval=1)
t.fit(model)
out["fit"] = calls[:]
calls.clear()
t.validate(model)
out["validate"] = calls[:]
calls.clear()
t.test(model)
out["test"] = calls[:]
calls.clear()
t.predict(model)
out["predict"] = calls[:]
emit(out)
"""
)


def test_hook_order_and_trainer_state_in_every_hook(tmp_path: Path) -> None:
    lightning, torchplug = run_both(HOOKS, tmp_path)
    for stage in ("fit", "validate", "test", "predict"):
        assert torchplug[stage] == lightning[stage], stage


STATE_AND_FLAGS = (
    COMMON
    + """
out = {}
t = trainer()
out["initial"] = state(t)
out["read_back"] = [t.max_epochs, t.num_sanity_val_steps, t.fast_dev_run, t.limit_train_batches, t.limit_val_batches,
                    t.val_check_interval, t.check_val_every_n_epoch, t.log_every_n_steps, t.max_steps,
                    t.interrupted, t.training, t.evaluating, t.num_devices, t.default_root_dir == os.getcwd()]
for kwargs in (dict(fast_dev_run=True), dict(fast_dev_run=1), dict(fast_dev_run=3), dict(num_sanity_val_steps=-1),
               dict(limit_train_batches=3.0), dict(overfit_batches=2), dict(default_root_dir="~/somewhere"),
               dict(barebones=True, enable_checkpointing=None, enable_progress_bar=None, enable_model_summary=None,
                    logger=None, num_sanity_val_steps=None)):
    t = trainer(**kwargs)
    out[str(sorted(kwargs))] = [t.fast_dev_run, t.max_epochs, t.max_steps, t.num_sanity_val_steps,
                                t.limit_train_batches, t.limit_val_batches, t.limit_test_batches,
                                where(t.default_root_dir), len(t.loggers),
                                t.checkpoint_callback is not None, t.progress_bar_callback is not None,
                                t.log_every_n_steps]
for kwargs in (dict(max_epochs=-2), dict(limit_train_batches=-1), dict(limit_val_batches=1.5),
               dict(val_check_interval="1:2"), dict(reload_dataloaders_every_n_epochs=-1), dict(fast_dev_run=-1),
               dict(gradient_clip_val="a"), dict(gradient_clip_algorithm="x"), dict(check_val_every_n_epoch=1.5),
               dict(val_check_interval=0.5, check_val_every_n_epoch=None), dict(profiler="nonsense"),
               dict(barebones=True, enable_checkpointing=True)):
    out["error " + str(sorted(kwargs))] = caught(lambda: trainer(**kwargs))

t = trainer(max_epochs=1, limit_train_batches=2)
model = Net()
t.fit(model, loader(8))
out["after_fit"] = [state(t), t.max_epochs, t.global_step, t.current_epoch, t.num_training_batches,
                    t.estimated_stepping_batches, t.is_last_batch, t.enable_validation]
t.validate(model, loader(4), verbose=False)
out["after_validate"] = state(t)
out["no_model"] = caught(lambda: trainer().validate())
out["not_a_module"] = caught(lambda: trainer().fit(torch.nn.Linear(2, 2)))
out["no_data"] = caught(lambda: trainer().fit(Net()))
out["not_iterable"] = caught(lambda: trainer().test(Net(), dataloaders=object()))
out["estimated"] = []
for kwargs in (dict(max_epochs=3), dict(max_steps=5), dict(max_epochs=2, accumulate_grad_batches=3)):
    class Estimates(Net):
        def configure_optimizers(self):
            out["estimated"].append(self.trainer.estimated_stepping_batches)
            return super().configure_optimizers()
    trainer(limit_train_batches=1.0, **kwargs).fit(Estimates(), loader(14))
emit(out)
"""
)


def test_trainer_state_flags_read_back_and_errors(tmp_path: Path) -> None:
    lightning, torchplug = run_both(STATE_AND_FLAGS, tmp_path)
    for key in lightning:
        if key.startswith("error") or key in ("no_model", "not_a_module", "no_data", "not_iterable"):
            assert_same_catch(torchplug[key], lightning[key], key)
            continue
        assert torchplug[key] == lightning[key], key


def assert_same_catch(ours: list | None, theirs: list | None, key: str) -> None:
    """An error where Lightning raises one, that ``except`` clauses written for Lightning's catch: each builtin class
    Lightning's is (torchplug's may be more: MisconfigurationError is a ValueError, ArgumentTypeError a TypeError too,
    ConflictError a RuntimeError too), and a MisconfigurationError where Lightning raises a MisconfigurationException."""
    assert (ours is None) == (theirs is None), key
    if theirs is not None:
        assert set(theirs[0]) <= set(ours[0]), key
        assert ours[1] or not theirs[1], key


DATA = (
    COMMON
    + """
if FRAMEWORK == "lightning":
    from pytorch_lightning.utilities import CombinedLoader
else:
    from torchplug.utilities import CombinedLoader

class Several(Net):
    def __init__(self):
        super().__init__()
        self.seen = []
    def training_step(self, batch, batch_idx):
        self.seen.append(["train", sorted(batch) if isinstance(batch, dict) else len(batch), batch_idx])
        first = batch["a"] if isinstance(batch, dict) else batch[0]
        return self.loss(first)
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(["val", batch_idx, dataloader_idx])
        self.log("val_loss", self.loss(batch))
    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen.append(["test", batch_idx, dataloader_idx])
        self.log("test_loss", self.loss(batch))
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return [batch_idx, dataloader_idx]

out = {}
for mode in ("max_size_cycle", "min_size", "max_size"):
    model = Several()
    t = trainer(max_epochs=1)
    t.fit(model, CombinedLoader({"a": loader(8), "b": loader(4)}, mode), [loader(4), loader(2)])
    out[mode] = [model.seen, t.num_training_batches, t.num_val_batches]
model = Several()
t = trainer(max_epochs=1)
t.fit(model, {"a": loader(6), "b": loader(2)})  # a dict of loaders: max_size_cycle
out["dict"] = [model.seen, t.num_training_batches]
out["sequential_fit"] = caught(lambda: trainer(max_epochs=1).fit(Several(), CombinedLoader([loader(2)], "sequential")))
pl.seed_everything(0)
model = Several()
t = trainer()
out["test_results"] = t.test(model, [loader(4), loader(2, seed=1)], verbose=False)
out["test_seen"] = model.seen
out["predict"] = t.predict(model, [loader(4), loader(2)])
out["predict_none"] = t.predict(model, loader(4), return_predictions=False)

# reload_dataloaders_every_n_epochs and the order loaders are asked for
asked = []
class Reloads(Net):
    def train_dataloader(self):
        asked.append(["train", self.current_epoch])
        return loader(4)
    def val_dataloader(self):
        asked.append(["val", self.current_epoch, self.trainer.sanity_checking])
        return loader(2)
trainer(max_epochs=4, reload_dataloaders_every_n_epochs=2, check_val_every_n_epoch=1,
        num_sanity_val_steps=1).fit(Reloads())
out["reloads"] = asked

# overfit_batches: the same first batches every epoch, shuffling turned off with Lightning's warning
with warnings.catch_warnings(record=True) as caught_warnings:
    warnings.simplefilter("always")
    t = trainer(max_epochs=2, overfit_batches=2)
    t.fit(Net(), loader(8, shuffle=True), loader(8, shuffle=True))
out["overfit"] = [t.num_training_batches, t.num_val_batches, type(t.train_dataloader.sampler).__name__,
                  any("overfit" in str(w.message) for w in caught_warnings)]

# samplers' set_epoch, for training and evaluation loaders
class Sampler(torch.utils.data.SequentialSampler):
    def __init__(self, source, name):
        super().__init__(source)
        self.name = name
    def set_epoch(self, epoch):
        asked.append([self.name, epoch])
asked.clear()
trainer(max_epochs=2).fit(Net(), DataLoader(data(4), sampler=Sampler(data(4), "train"), batch_size=2),
                          DataLoader(data(2), sampler=Sampler(data(2), "val"), batch_size=2))
out["set_epoch"] = asked
emit(out)
"""
)


def test_several_loaders_reloading_overfitting_and_samplers(tmp_path: Path) -> None:
    lightning, torchplug = run_both(DATA, tmp_path)
    for key in lightning:
        if key == "sequential_fit":
            assert_same_catch(torchplug[key], lightning[key], key)
            continue
        assert torchplug[key] == lightning[key], key


OPTIMIZATION = (
    COMMON
    + """
out = {}
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    class NoOptimizer(Net):
        def configure_optimizers(self):
            return None
    pl.seed_everything(0)
    model = NoOptimizer()
    before = weights(model)
    t = trainer(max_epochs=1)
    t.fit(model, loader(4))
    out["none"] = [weights(model) == before, t.global_step, any("returned `None`" in str(w.message) for w in seen)]

class Plateau(Net):
    def __init__(self, strict=True, top_level=True):
        super().__init__()
        self.strict, self.top_level = strict, top_level
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        if self.top_level:
            return {"optimizer": opt, "lr_scheduler": scheduler, "monitor": "loss"}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": "missing",
                                                   "strict": self.strict, "unknown_key": 1}}
pl.seed_everything(0)
t = trainer(max_epochs=3)
t.fit(Plateau(), loader(4))
out["plateau_lr"] = t.optimizers[0].param_groups[0]["lr"]
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    trainer(max_epochs=1).fit(Plateau(strict=False, top_level=False), loader(4))
    out["not_strict"] = sorted({w.category.__name__ for w in seen if "unsupported keys" in str(w.message)
                                or "not available" in str(w.message)})
out["strict"] = caught(lambda: trainer(max_epochs=1).fit(Plateau(strict=True, top_level=False), loader(4)))

# the handle: LightningOptimizer-like, step(closure, **kwargs) reaching the optimizer's step with the closure
class Sam(torch.optim.SGD):
    def step(self, closure=None, **kwargs):
        assert closure is not None, "SAM-like optimizers need the closure"
        out.setdefault("sam_kwargs", []).append(sorted(kwargs))
        closure()
        return super().step()

class Manual(Net):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        out["handle"] = [isinstance(opt, torch.optim.SGD), str(opt).startswith("Lightning"), type(opt).__name__]
        def closure():
            loss = self.loss(batch)
            opt.zero_grad()
            self.manual_backward(loss)
            return loss
        opt.step(closure=closure, rho=0.05)
    def configure_optimizers(self):
        return Sam(self.parameters(), lr=0.1)

class Automatic(Net):
    def configure_optimizers(self):
        return Sam(self.parameters(), lr=0.1)

pl.seed_everything(0)
model = Manual()
t = trainer(max_epochs=1)
t.fit(model, loader(4))
out["manual"] = [weights(model), t.global_step]
pl.seed_everything(0)
model = Automatic()
trainer(max_epochs=1).fit(model, loader(4))
out["automatic"] = weights(model)

# LearningRateMonitor: Lightning's names and momentum values
class Logger(pl.loggers.Logger):
    name, version = "x", 0
    def __init__(self):
        super().__init__()
        self.keys = []
    def log_metrics(self, metrics, step=None):
        self.keys.append([step, sorted(metrics)])
    def log_hyperparams(self, *args, **kwargs):
        pass

class TwoAdams(Net):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.other = torch.nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        for opt in self.optimizers():
            opt.zero_grad()
            self.manual_backward(self.loss(batch))
            opt.step()
    def configure_optimizers(self):
        a = torch.optim.Adam(self.layer.parameters(), lr=0.1)
        b = torch.optim.Adam([{"params": self.other.weight, "name": "w"}, {"params": self.other.bias}], lr=0.2)
        c = torch.optim.SGD(self.parameters(), lr=0.3)
        return [a, b, c], [torch.optim.lr_scheduler.StepLR(c, 1)]
monitor = pl.callbacks.LearningRateMonitor(log_momentum=True)
logger = Logger()
trainer(max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[monitor]).fit(TwoAdams(), loader(4))
out["lr_monitor"] = [sorted(monitor.lrs), {k: v for k, v in sorted(monitor.last_momentum_values.items())},
                     logger.keys]
emit(out)
"""
)


def test_optimizer_forms_handles_and_lr_monitor(tmp_path: Path) -> None:
    lightning, torchplug = run_both(OPTIMIZATION, tmp_path)
    for key in lightning:
        if key == "strict":
            assert_same_catch(torchplug[key], lightning[key], key)
            continue
        assert torchplug[key] == lightning[key], key


EVALUATION = (
    COMMON
    + """
class Writer(pl.callbacks.BasePredictionWriter):
    def __init__(self):
        super().__init__("batch_and_epoch")
        self.batches, self.epochs = [], []
    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append([batch_indices, batch_idx, dataloader_idx, list(prediction.shape)])
    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epochs.append([len(predictions), batch_indices])

class Checkpointed(Net):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch) + (10.0 if self.current_epoch == 2 else 0.0))

out = {}
pl.seed_everything(0)
model = Checkpointed()
writer = Writer()
t = pl.Trainer(accelerator="cpu", max_epochs=3, enable_progress_bar=False, enable_model_summary=False, logger=False,
               default_root_dir=os.getcwd(), num_sanity_val_steps=0, callbacks=[
                   pl.callbacks.ModelCheckpoint(monitor="val_loss", filename="best"), writer])
t.fit(model, loader(8), loader(4))
out["final_weights"] = weights(model)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    out["validate_best"] = t.validate(dataloaders=loader(4), verbose=False)
    out["said_best"] = any("best model of the previous `fit`" in str(w.message) for w in seen)
out["ckpt_path"] = os.path.basename(t.ckpt_path)
out["best_weights"] = weights(model)
out["test"] = t.test(model, loader(4), verbose=False)
out["predict"] = [p.shape[0] for p in t.predict(model, loader(6, batch_size=4))]
out["writer"] = [writer.batches, writer.epochs]
out["predict_none"] = t.predict(model, loader(4), return_predictions=False)
emit(out)
"""
)


def test_validate_test_predict_results_best_checkpoint_and_writers(tmp_path: Path) -> None:
    lightning, torchplug = run_both(EVALUATION, tmp_path)
    for key in lightning:
        assert torchplug[key] == lightning[key], key
