"""Train a small classifier on synthetic data with torchplug, on the CPU.

    make demo                      # sets up .venv, then runs this
    .venv/bin/python examples/demo.py --max-epochs 5 --accelerator auto --precision bf16-mixed

Change the backends with arguments only: ``--strategy ddp_cpu --devices 2`` runs two processes (torchplug-ddp),
``--precision 16-mixed`` or ``bf16-mixed`` mixed precision (torchplug-amp), ``--accelerator gpu`` a GPU
(torchplug-cuda). The model code below does not change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.callbacks import EarlyStopping, ModelCheckpoint


class SpiralData(torchplug.DataModule):
    """Three interleaved spirals: a problem a linear model cannot solve and a small MLP can."""

    def __init__(self, points_per_class: int = 600, batch_size: int = 64) -> None:
        super().__init__()
        self.points_per_class, self.batch_size = points_per_class, batch_size

    def setup(self, stage: str) -> None:
        generator = torch.Generator().manual_seed(0)
        xs, ys = [], []
        for label in range(3):
            t = torch.linspace(0.0, 1.0, self.points_per_class)
            angle = t * 4.0 + label * 2.0944 + torch.randn(self.points_per_class, generator=generator) * 0.2
            xs.append(torch.stack([t * torch.sin(angle), t * torch.cos(angle)], dim=1))
            ys.append(torch.full((self.points_per_class,), label))
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(len(x), generator=generator)
        x, y = x[order], y[order]
        split = int(0.8 * len(x))
        self.train_set = TensorDataset(x[:split], y[:split])
        self.val_set = TensorDataset(x[split:], y[split:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class SpiralClassifier(torchplug.Module):
    def __init__(self, hidden: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--devices", default="1")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--root", default="demo_output", help="where logs and checkpoints go")
    args = parser.parse_args()

    torchplug.seed_everything(0)
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, save_last=True)
    trainer = torchplug.Trainer(
        accelerator=args.accelerator,
        strategy=args.strategy,
        devices=args.devices,
        precision=args.precision,
        max_epochs=args.max_epochs,
        default_root_dir=args.root,
        log_every_n_steps=10,
        callbacks=[checkpoint, EarlyStopping(monitor="val_loss", patience=5)],
    )
    model = SpiralClassifier()
    trainer.fit(model, datamodule=SpiralData())
    if not trainer.is_global_zero:
        return
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    csv = (Path(trainer.log_dir) / "metrics.csv").resolve()
    print(f"\nfinal validation metrics: {metrics}")
    print(f"resume with: trainer.fit(model, datamodule=..., ckpt_path={checkpoint.last_model_path!r})")
    print(
        f"Done: best checkpoint {checkpoint.best_model_path}, metrics {csv}; "
        f"plot them with: .venv/bin/torchplug plot {csv}"
    )


if __name__ == "__main__":
    main()
