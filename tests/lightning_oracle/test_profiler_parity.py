"""Profilers and the Timer callback on Lightning 2.6.6 and on torchplug: the same reports, actions and counts."""

from __future__ import annotations

from pathlib import Path

from ._oracle import run_both

PROFILED = """
import importlib, time
from unittest import mock
from torch.utils.data import DataLoader, TensorDataset

profilers = importlib.import_module(pl.__name__ + ".profilers")
out = {}
for extended in (True, False):
    profiler = profilers.SimpleProfiler(extended=extended)
    profiler.recorded_durations.update({"a": [1.0, 2.0], "longer_action": [0.5], "c": [3.25]})
    with mock.patch("time.perf_counter", return_value=110.0):
        profiler.start_time = 100.0
        out[f"report extended={extended}"] = profiler.summary()


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
    def step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)
    def training_step(self, batch, batch_idx):
        return self.step(batch)
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.step(batch))
    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.step(batch))
    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Noop(pl.Callback):
    pass


x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
profiler = profilers.SimpleProfiler()
trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_val_batches=2, num_sanity_val_steps=1,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     profiler=profiler, callbacks=[Noop()])
model = Net()
trainer.fit(model, loader, loader)
trainer.test(model, loader, verbose=False)
trainer.predict(model, loader)
# the actions both have (Lightning also times its strategy's own hooks, and module hooks the model does not override)
kept = ("[Callback]Noop.on_train", "[Callback]Noop.on_validation", "[Callback]Noop.on_test")
steps = ("_step", ".backward", ".batch_to_device")
out["counts"] = {name: len(durations) for name, durations in profiler.recorded_durations.items()
                 if name.startswith(kept) or name.endswith("_next") or name == "run_training_epoch"
                 or (name.startswith("[Strategy]") and name.endswith(steps))}

timer = pl.callbacks.Timer(duration={"minutes": 1}, interval="epoch")
out["timer"] = [timer.time_remaining(), timer.start_time(), timer.time_elapsed("validate")]
emit(out)
"""


def test_profiler_reports_and_actions_match_lightning(tmp_path: Path) -> None:
    lightning, torchplug = run_both(PROFILED, tmp_path)
    for key in lightning:
        assert torchplug[key] == lightning[key], key
