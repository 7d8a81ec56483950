"""ProgressBar: plain periodic lines when stdout is not a terminal, tqdm bars in one, rank 0 only."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchplug
from torchplug.callbacks import ProgressBar, TQDMProgressBar
from torchplug.testing import subprocess_env


class Net(torchplug.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        self.log("hidden", loss)  # not prog_bar: never shown
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(batches: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(2 * batches, 2)), batch_size=2)


def _trainer(tmp_path: Path, bar: ProgressBar | None = None, **kwargs: Any) -> torchplug.Trainer:
    options: dict[str, Any] = dict(
        default_root_dir=tmp_path, max_epochs=2, enable_checkpointing=False, enable_model_summary=False,
        num_sanity_val_steps=2,
    )  # fmt: skip
    options.update(kwargs)
    return torchplug.Trainer(accelerator="cpu", callbacks=[bar] if bar is not None else None, **options)


_LINE = re.compile(
    r"^Epoch (\d)/1: batch (\d+)/(\d+) \((\d+)%\) [\d.]+ it/s (ETA \d:\d\d:\d\d|took \d:\d\d:\d\d)(?: (.*))?$"
)


def test_plain_lines_when_stdout_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = _trainer(tmp_path)  # the default callbacks include a ProgressBar
    trainer.fit(Net(), _loader(20), _loader(5))
    out = capsys.readouterr().out
    assert "\r" not in out and "Sanity" not in out
    lines = out.strip().splitlines()
    parsed = [_LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    for epoch in (0, 1):
        mine = [m for m in parsed if m and m.group(1) == str(epoch)]
        assert {m.group(3) for m in mine} == {"20"}  # the training batches (validation has a bar of its own)
        assert 5 <= len(mine) <= 11  # about every 10%, not every batch
        done = [int(m.group(2)) for m in mine]
        assert done == sorted(done) and done[-1] == 20 and mine[-1].group(5).startswith("took")
        final = dict(item.split("=") for item in mine[-1].group(6).split())
        assert set(final) == {"loss", "val_loss", "v_num"} and final["v_num"] == "0"
        assert float(final["loss"]) >= 0 and float(final["val_loss"]) >= 0
    assert "ETA" in lines[0] and "hidden" not in out


def test_time_based_lines_and_metrics_read_only_when_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reads = []

    class Counting(TQDMProgressBar):
        def get_metrics(self, trainer: Any) -> dict[str, Any]:
            reads.append(trainer.global_step)
            return super().get_metrics(trainer)

    bar = Counting(plain=None)
    _trainer(tmp_path, bar, max_epochs=1, logger=False).fit(Net(), _loader(100))
    assert len(capsys.readouterr().out.splitlines()) == 10  # 10%, 20%, ..., 90%, and the final line
    assert len(reads) == 10  # device values are read when a line is printed, not at every one of 100 steps

    bar = Counting(plain=None)
    bar.line_interval_s = 0.0  # a line whenever the interval has passed: here every batch
    _trainer(tmp_path, bar, max_epochs=1, logger=False).fit(Net(), _loader(7))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"Epoch 0/0: batch {i}/7" for i in range(1, 8)] + [
        "Epoch 0/0: batch 7/7"
    ]


def test_validate_test_predict_have_their_own_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = _trainer(tmp_path, logger=False)
    model = Net()
    trainer.validate(model, _loader(4))
    trainer.test(model, _loader(3))
    trainer.predict(model, _loader(2))
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines if "100%" in line] == ["Validation", "Testing", "Predicting"]
    assert any(re.match(r"^Validation: batch 4/4 \(100%\) .*val_loss=", x) for x in lines)
    assert any(re.match(r"^Testing: batch 3/3 \(100%\) .*test_loss=", x) for x in lines)
    assert any(re.match(r"^Predicting: batch 2/2 \(100%\) [\d.]+ it/s took", x) for x in lines)


def test_tqdm_bar_when_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _trainer(tmp_path, TQDMProgressBar(plain=False), max_epochs=1, logger=False).fit(
        Net(), _loader(6), _loader(2)
    )
    out = capsys.readouterr().out
    assert "\r" in out
    assert re.search(r"Epoch 0/0: 100%\|.*\| 6/6 \[[\d:]+<[\d:]+, +[\d.]+it/s, loss=[\d.e-]+, val_loss=", out)
    assert "Sanity Checking" in out and "Validation" in out


def test_silent_when_disabled_or_not_rank_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _trainer(tmp_path, enable_progress_bar=False, max_epochs=1, logger=False).fit(
        Net(), _loader(3), _loader(1)
    )
    assert capsys.readouterr().out == ""
    _trainer(tmp_path, TQDMProgressBar(refresh_rate=0), max_epochs=1, logger=False).fit(Net(), _loader(3))
    assert capsys.readouterr().out == ""

    # A process of global rank 1 (stand-in trainer: only the attributes the bar reads) prints nothing.
    bar = TQDMProgressBar(plain=True)
    rank1 = SimpleNamespace(is_global_zero=False, num_training_batches=3, num_val_batches=[], current_epoch=0,
                            max_epochs=1, progress_bar_metrics={}, logger=None)  # fmt: skip
    bar.setup(rank1, None, "fit")  # type: ignore[arg-type]
    bar.on_train_epoch_start(rank1, None)  # type: ignore[arg-type]
    for i in range(3):
        bar.on_train_batch_end(rank1, None, None, None, i)  # type: ignore[arg-type]
    bar.on_train_epoch_end(rank1, None)  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""


_TTY_CHILD = textwrap.dedent(
    """
    import torch, torchplug
    from torch.utils.data import DataLoader, TensorDataset

    class Net(torchplug.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("loss", loss, prog_bar=True)
            return loss
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = torchplug.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_real_terminal_gets_a_bar(tmp_path: Path) -> None:
    import pty

    main_fd, child_fd = pty.openpty()  # reports a 0x0 size, as some CI runners' terminals do
    child = subprocess.Popen([sys.executable, "-c", _TTY_CHILD], stdout=child_fd, stderr=child_fd, cwd=tmp_path,
                             env=subprocess_env())  # fmt: skip
    os.close(child_fd)
    chunks = []
    while True:
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    child.wait(timeout=60)
    os.close(main_fd)
    out = b"".join(chunks).decode(errors="replace")
    assert child.returncode == 0, out
    assert "\r" in out and re.search(r"Epoch 0/0: 100%\|.*\| 4/4 .*it/s, loss=", out), out
    assert "batch 4/4 (100%)" not in out  # not the plain-line style


def test_lightnings_progress_bar_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import copy
    import pickle

    from torchplug.callbacks import TQDMProgressBar
    from torchplug.callbacks.progress import Tqdm

    trainer = _trainer(tmp_path, max_epochs=2, logger=False)
    bar = trainer.progress_bar_callback
    assert (
        isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 1 and bar.is_enabled and not bar.is_disabled
    )
    model = Net()
    trainer.fit(model, _loader(6), _loader(3))
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (6, 6)
    assert (bar.val_progress_bar.n, bar.val_progress_bar.total) == (3, 3)
    assert bar.total_train_batches == 6 and bar.trainer is trainer and bar.pl_module is model
    assert set(bar.get_metrics(trainer, model)) == {"loss", "val_loss"}
    pickle.loads(pickle.dumps(trainer))  # a trainer holding the bar pickles and copies (stdout stays behind)
    copy.deepcopy(bar)
    trainer.test(model, _loader(2))
    assert (bar.test_progress_bar.n, bar.test_progress_bar.total) == (2, 2)
    capsys.readouterr()

    quiet = TQDMProgressBar(refresh_rate=0)  # hidden, yet counting as Lightning's disabled tqdm bars do
    _trainer(tmp_path, quiet, max_epochs=1, logger=False).fit(Net(), _loader(4))
    assert quiet.is_disabled and quiet.train_progress_bar.n == 4 and capsys.readouterr().out == ""
    monkeypatch.setenv("TQDM_MINITERS", "5")
    assert TQDMProgressBar(refresh_rate=2).refresh_rate == 5
    assert [Tqdm.format_num(x) for x in (1, 1.0, 0.1, 1e-5, "10000", "abc")] == ["1", "1.000", "0.100", "1e-5",
                                                                                  "10000", "abc"]  # fmt: skip
    with pytest.raises(
        torchplug.MisconfigurationError, match="`enable_progress_bar=False` but found `TQDMProgressBar`"
    ):
        torchplug.Trainer(accelerator="cpu", callbacks=[TQDMProgressBar()], enable_progress_bar=False)


def test_progress_bar_base_class_counts_per_dataloader_and_prints_through_tqdm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[str, int, int | float, int | float]] = []

    class Counting(ProgressBar):
        """A bar of one's own: Lightning's base-class API, nothing drawn."""

        def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                      dataloader_idx: int = 0) -> None:  # fmt: skip
            if self.has_dataloader_changed(dataloader_idx):
                stage = "sanity" if trainer.sanity_checking else "val"
                seen.append(
                    (stage, dataloader_idx, self.total_val_batches_current_dataloader, self.total_val_batches)
                )

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            self.reset_dataloader_idx_tracker()

    class TwoLoaders(Net):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.print("in validation", end="|")

    bar = Counting()
    trainer = _trainer(tmp_path, bar, max_epochs=1, logger=False, num_sanity_val_steps=1)
    trainer.fit(TwoLoaders(), _loader(3), [_loader(2), _loader(4)])
    assert seen == [("sanity", 0, 1, 6), ("sanity", 1, 1, 6), ("val", 0, 2, 6), ("val", 1, 4, 6)]
    assert bar.trainer is trainer and bar.is_enabled and bar.total_train_batches == 3
    assert "in validation|" in capsys.readouterr().out  # the base class prints plainly
    bar.disable()
    assert bar.is_disabled

    with pytest.raises(TypeError, match="reference has not been set yet"):
        Counting().trainer  # noqa: B018


def test_module_print_goes_through_the_tqdm_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchplug.callbacks.progress import Tqdm

    written: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(Tqdm, "write", classmethod(lambda cls, s, **kw: written.append((s, kw))))

    class Printing(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.print("step", batch_idx, sep="=", end="")
            return super().training_step(batch, batch_idx)

    _trainer(tmp_path, TQDMProgressBar(), max_epochs=1, logger=False).fit(Printing(), _loader(2))
    assert written == [("step=0", {"end": ""}), ("step=1", {"end": ""})]

    written.clear()  # a hidden bar does not take the text
    _trainer(tmp_path, TQDMProgressBar(refresh_rate=0), max_epochs=1, logger=False).fit(
        Printing(), _loader(2)
    )
    assert written == []


def test_a_bar_per_evaluation_dataloader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    class TwoLoaders(Net):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("val_loss", self.layer(batch[0]).pow(2).mean())

        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("test_loss", self.layer(batch[0]).pow(2).mean())

    bar = TQDMProgressBar(plain=True)
    trainer = _trainer(tmp_path, bar, max_epochs=1, logger=False)
    trainer.validate(TwoLoaders(), [_loader(2), _loader(3)])
    lines = [line for line in capsys.readouterr().out.splitlines() if "took" in line]
    assert [line.split(":")[0] for line in lines] == ["Validation DataLoader 0", "Validation DataLoader 1"]
    assert "batch 2/2 " in lines[0] and "batch 3/3 " in lines[1]
    assert (bar.val_progress_bar.desc, bar.val_progress_bar.n, bar.val_progress_bar.total) == (
        "Validation DataLoader 1", 3, 3,
    )  # fmt: skip
    trainer.test(TwoLoaders(), [_loader(1), _loader(4)])
    assert (bar.test_progress_bar.desc, bar.test_progress_bar.total) == ("Testing DataLoader 1", 4)
    trainer.test(TwoLoaders(), _loader(4))  # one loader: no index in the name
    assert (bar.test_progress_bar.desc, bar.test_progress_bar.total) == ("Testing", 4)


def test_standard_metrics_and_a_logged_v_num() -> None:
    from torchplug.callbacks.progress import get_standard_metrics

    def trainer(*versions: Any, **logged: Any) -> Any:
        loggers = [SimpleNamespace(version=v) for v in versions]
        return SimpleNamespace(loggers=loggers, progress_bar_metrics=logged)

    assert get_standard_metrics(trainer()) == {} and get_standard_metrics(trainer("")) == {}
    assert get_standard_metrics(trainer(7)) == {"v_num": 7}
    assert get_standard_metrics(trainer("version_12345")) == {"v_num": "2345"}  # the last 4 characters
    assert get_standard_metrics(trainer("abcdef", 3, 3)) == {"v_num": "ef_3"}  # distinct versions joined
    assert TQDMProgressBar().get_metrics(trainer(1, loss=0.5)) == {"v_num": 1, "loss": 0.5}
    with pytest.warns(UserWarning, match="already shows 'v_num'"):
        assert TQDMProgressBar().get_metrics(trainer(1, v_num=9)) == {"v_num": 9}
