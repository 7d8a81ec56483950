"""Tuner parity: the batch size search (with an out-of-memory error raised above a size) and the learning rate
search's shape, run on Lightning 2.6.6 and on torchplug, must agree.

The learning rates between ``min_lr`` and ``max_lr`` are not compared: torchplug spaces them evenly (in log space for
``"exponential"``), Lightning's schedule skips the second point; the first, the last and their count are the same.
"""

from __future__ import annotations

from pathlib import Path

from ._oracle import run_both

SNIPPET = """
import copy, importlib, tempfile
from torch.utils.data import DataLoader, TensorDataset

Tuner = importlib.import_module(pl.__name__ + ".tuner").Tuner
g = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))

class Net(pl.LightningModule):
    def __init__(self, limit=10_000, batch_size=2, lr=0.01):
        super().__init__()
        self.limit, self.batch_size, self.lr = limit, batch_size, lr
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if len(batch[0]) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(DATA, batch_size=self.batch_size)

def trainer(**kwargs):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, max_epochs=3,
                      default_root_dir=tempfile.mkdtemp(), **kwargs)

cases = [("power", 2, 13, 25), ("binsearch", 2, 13, 25), ("binsearch", 500, 100, 10)]
for mode, init, limit, trials in cases:
    model, t = Net(limit=limit), trainer()
    before = copy.deepcopy(model.state_dict())
    found = Tuner(t).scale_batch_size(model, mode=mode, init_val=init, max_trials=trials, steps_per_trial=1)
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    emit([mode, init, limit, trials, found, model.batch_size, t.train_dataloader.batch_size, t.global_step, same])

model, t = Net(), trainer()
before = copy.deepcopy(model.state_dict())
finder = Tuner(t).lr_find(model, min_lr=1e-4, max_lr=1.0, num_training=12, early_stop_threshold=None)
lrs = finder.results["lr"]
emit([len(lrs), len(finder.results["loss"]), round(lrs[0], 12), round(lrs[-1], 12), t.global_step,
      t.current_epoch, all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
      model.lr == finder.suggestion(), finder.suggestion() is not None])
"""


def test_batch_size_search_and_lr_find_shape(tmp_path: Path) -> None:
    lightning, torchplug = run_both(SNIPPET, tmp_path, timeout=600)
    assert torchplug == lightning
