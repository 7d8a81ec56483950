"""A DataModule's state_dict is timed once per checkpoint written, not for the saveability check before the run."""

from torchplug import DataModule, Trainer
from torchplug.profilers import SimpleProfiler
from torchplug.testing import BoringModel, regression_loader


class Stateful(DataModule):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def train_dataloader(self):
        return regression_loader(16, 8)

    def state_dict(self):
        self.calls += 1
        return {"temp": 1}


def test_datamodule_state_dict_is_profiled_per_saved_checkpoint(tmp_path):
    data = Stateful()
    profiler = SimpleProfiler()
    trainer = Trainer(
        accelerator="cpu", default_root_dir=tmp_path, max_steps=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, profiler=profiler,
    )  # fmt: skip
    trainer.fit(BoringModel(), datamodule=data)
    assert len(list((tmp_path / "checkpoints").glob("*.ckpt"))) == 1
    assert len(profiler.recorded_durations["[LightningDataModule]Stateful.state_dict"]) == 1
    assert data.calls == 2  # the check before the run asked too, untimed
