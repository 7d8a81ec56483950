"""``ProgressBar``: tqdm bars in a terminal, plain periodic lines anywhere else (CI logs, files, pipes)."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import torch

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

# Draw a terminal bar at most this often: metrics are read from the device only when a bar is drawn.
_MIN_DRAW_INTERVAL_S = 0.1


class ProgressBar(Callback):
    """Show progress on global rank 0: epoch, batch i/N, it/s, ETA and the metrics logged with ``prog_bar=True``.

    In a terminal this draws ``tqdm`` bars: one per training epoch (its total counts the epoch's validation batches
    too, like Lightning's main bar) and a separate, transient one for validation, and one for ``test``/``predict``.
    When stdout is not a terminal, \\r-redrawn bars would turn into unreadable noise, so it prints plain lines instead,
    each time another 10% of the epoch is done or ``line_interval_s`` seconds have passed, e.g.
    ``Epoch 0/2: batch 50/100 (50%) 812.3 it/s ETA 0:00:01 loss=0.123 v_num=0``. ``plain=True``/``False`` forces
    one style. ``refresh_rate`` updates a terminal bar every N batches (0 hides it).
    """

    line_interval_s: float = 30.0

    def __init__(self, refresh_rate: int = 1, leave: bool = True, *, plain: bool | None = None) -> None:
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationError(f"ProgressBar(refresh_rate={refresh_rate!r}): use an int >= 0 (0 hides it)")
        self.refresh_rate = refresh_rate
        self.leave = leave
        self._plain_setting = plain
        self._enabled = True
        self._active = False
        self._file: TextIO = sys.stdout
        self._plain = False
        self._bars: dict[str, _Progress] = {}
        self._trainer: Trainer | None = None
        self._device_values: dict[str, str] = {}
        self._device_read_interval = -1

    # ---------------------------------------------------------------------------------------------------- switches
    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # ---------------------------------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._trainer = trainer
        self._file = sys.stdout
        self._active = self.is_enabled and trainer.is_global_zero
        isatty = getattr(self._file, "isatty", None)
        self._plain = self._plain_setting if self._plain_setting is not None else not (isatty and isatty())

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._close_all()

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        self._close_all()

    # ---------------------------------------------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._active:
            return
        train = trainer.num_training_batches
        total = train + self._val_batches_this_epoch(trainer) if train != math.inf else math.inf
        self._open("train", self._epoch_label(trainer), total, leave=self.leave)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self._bars.get("train")
        if bar is not None:
            if bar.train_done == 0 and batch_idx > 0:
                bar.resumed_at(batch_idx)  # resumed mid-epoch: the rate counts only batches run here
            bar.train_done = batch_idx + 1
            bar.advance_to(bar.train_done + bar.val_done, self._metrics, force=False, every=self.refresh_rate)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        bar = self._bars.pop("train", None)
        if bar is not None:
            bar.finish(self._metrics())

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._close_all()

    # ---------------------------------------------------------------------------------------------------- evaluation
    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        if not self._active:
            return
        if trainer.sanity_checking:
            if not self._plain:  # a sanity check is not worth a line in a log
                self._open("val", "Sanity Checking", _total(trainer.num_sanity_val_batches), leave=False)
        elif getattr(trainer, "stage", None) == "fit":
            self._open("val", "Validation", _total(trainer.num_val_batches), leave=False, quiet=True)
        else:
            self._open("val", "Validation", _total(trainer.num_val_batches), leave=True)

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        bar = self._bars.get("val")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._no_metrics, force=False, every=self.refresh_rate)
        main = self._bars.get("train")
        if main is not None and not trainer.sanity_checking:
            main.val_done += 1
            main.advance_to(main.train_done + main.val_done, self._metrics, force=False, every=self.refresh_rate)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        bar = self._bars.pop("val", None)
        if bar is not None:
            bar.finish(self._metrics() if bar.leave else {})
        main = self._bars.get("train")
        if main is not None and not trainer.sanity_checking:
            main.advance_to(main.n, self._metrics, force=True, every=1)  # show the fresh validation metrics

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self._active:
            self._open("test", "Testing", _total(trainer.num_test_batches), leave=True)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        bar = self._bars.get("test")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._metrics, force=False, every=self.refresh_rate)

    def on_test_end(self, trainer: Trainer, pl_module: Module) -> None:
        bar = self._bars.pop("test", None)
        if bar is not None:
            bar.finish(self._metrics())

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self._active:
            self._open("predict", "Predicting", _total(trainer.num_predict_batches), leave=True)

    def on_predict_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        bar = self._bars.get("predict")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._no_metrics, force=False, every=self.refresh_rate)

    def on_predict_end(self, trainer: Trainer, pl_module: Module) -> None:
        bar = self._bars.pop("predict", None)
        if bar is not None:
            bar.finish({})

    # ---------------------------------------------------------------------------------------------------- helpers
    def get_metrics(self, trainer: Trainer) -> dict[str, Any]:
        """What the bars show: ``prog_bar=True`` metrics and the logger's version as ``v_num`` (Lightning's names).

        Override to change it; called only when a bar or line is drawn.
        """
        metrics: dict[str, Any] = dict(trainer.progress_bar_metrics)
        logger = getattr(trainer, "logger", None)
        version = getattr(logger, "version", None) if logger is not None else None
        if version is not None:
            metrics["v_num"] = version
        return metrics

    def _metrics(self) -> dict[str, str]:
        assert self._trainer is not None
        trainer = self._trainer
        # A value on an accelerator is read (a device sync) at most once per logging interval, when the trainer
        # reads its logged values anyway; host values are shown fresh at every redraw.
        interval = trainer.global_step // max(getattr(trainer, "log_every_n_steps", 1), 1)
        fresh = not getattr(trainer, "training", False) or interval != self._device_read_interval
        shown: dict[str, str] = {}
        for name, value in self.get_metrics(trainer).items():
            on_device = isinstance(value, torch.Tensor) and value.device.type != "cpu"
            if on_device and not fresh and name in self._device_values:
                shown[name] = self._device_values[name]
                continue
            shown[name] = _format_value(value)
            if on_device:
                self._device_values[name] = shown[name]
        if fresh:
            self._device_read_interval = interval
        return shown

    @staticmethod
    def _no_metrics() -> dict[str, str]:
        return {}

    def _open(self, key: str, label: str, total: float, leave: bool, quiet: bool = False) -> None:
        previous = self._bars.pop(key, None)
        if previous is not None:
            previous.close()
        if self._plain:
            # In a log nothing is redrawn, so an epoch's closing line always stays (it is the one worth reading).
            leave = leave or key == "train"
            self._bars[key] = _Lines(label, total, self._file, self.line_interval_s, quiet=quiet, leave=leave)
        else:
            position = 1 if key == "val" and "train" in self._bars else 0
            self._bars[key] = _Bar(label, total, self._file, leave=leave, position=position)

    def _close_all(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    @staticmethod
    def _epoch_label(trainer: Trainer) -> str:
        max_epochs = getattr(trainer, "max_epochs", -1)
        if max_epochs is not None and max_epochs > 0:
            return f"Epoch {trainer.current_epoch}/{max_epochs - 1}"
        return f"Epoch {trainer.current_epoch}"

    @staticmethod
    def _val_batches_this_epoch(trainer: Trainer) -> int | float:
        """Validation batches that will run during this training epoch (0 when validation skips it)."""
        val = _total(getattr(trainer, "num_val_batches", []) or [])
        every = getattr(trainer, "check_val_every_n_epoch", 1)
        if not val or (every is not None and (trainer.current_epoch + 1) % every != 0):
            return 0
        train, interval = trainer.num_training_batches, getattr(trainer, "val_check_interval", 1.0)
        if every is None or train == math.inf:
            return val if every is not None else 0
        per_run = max(1, int(train * interval)) if isinstance(interval, float) else int(interval)
        return val * max(1, int(train // per_run))


class _Progress:
    """One bar or one sequence of lines: counts batches and redraws when its policy says so."""

    def __init__(self, label: str, total: float, leave: bool) -> None:
        self.label, self.total, self.leave = label, total, leave
        self.n = 0
        self.train_done = 0
        self.val_done = 0

    def resumed_at(self, n: int) -> None: ...
    def advance_to(self, n: int, metrics: Any, force: bool, every: int) -> None: ...
    def finish(self, metrics: dict[str, str]) -> None: ...
    def close(self) -> None: ...


class _Bar(_Progress):
    def __init__(self, label: str, total: float, file: TextIO, leave: bool, position: int) -> None:
        from tqdm import tqdm

        super().__init__(label, total, leave)
        try:
            columns, lines = os.get_terminal_size(file.fileno())
        except (AttributeError, OSError, ValueError):
            columns, lines = 0, 0
        self._tqdm = tqdm(
            desc=label,
            total=None if total == math.inf else int(total),
            file=file,
            leave=leave,
            position=position,
            # Follow resizes; a terminal that reports a 0x0 size (a fresh pty, some CI runners) would get no bar
            # at all from tqdm, so it gets a fixed 100x40 instead.
            dynamic_ncols=bool(columns and lines),
            ncols=None if columns else 100,
            nrows=None if lines else 40,
            smoothing=0,  # the epoch's average speed: steadier than tqdm's moving average, and what ETA needs
            mininterval=0,  # this class decides when to draw
        )
        self._last_draw = 0.0

    def resumed_at(self, n: int) -> None:
        self._tqdm.initial = self._tqdm.n = n

    def advance_to(self, n: int, metrics: Any, force: bool, every: int) -> None:
        self.n = n
        if not force and (n % every != 0 and n != self.total):
            return
        now = time.monotonic()
        if not force and now - self._last_draw < _MIN_DRAW_INTERVAL_S and n != self.total:
            return
        self._last_draw = now
        self._tqdm.n = n
        values = metrics()
        if values:
            self._tqdm.set_postfix(values, refresh=False)
        self._tqdm.refresh()

    def finish(self, metrics: dict[str, str]) -> None:
        self._tqdm.n = self.n
        if metrics:
            self._tqdm.set_postfix(metrics, refresh=False)
        self.close()  # draws the final state when the bar stays

    def close(self) -> None:
        self._tqdm.close()


class _Lines(_Progress):
    def __init__(self, label: str, total: float, file: TextIO, interval_s: float, quiet: bool, leave: bool) -> None:
        super().__init__(label, total, leave)
        self._file, self._interval_s, self._quiet = file, interval_s, quiet
        self._start = self._last_line = time.monotonic()
        self._first_n = 0
        self._tenths_shown = 0

    def resumed_at(self, n: int) -> None:
        self._first_n = n
        self._tenths_shown = int(10 * n / self.total) if self.total not in (0, math.inf) else 0

    def advance_to(self, n: int, metrics: Any, force: bool, every: int) -> None:
        self.n = n
        if self._quiet:
            return
        now = time.monotonic()
        tenths = int(10 * n / self.total) if self.total not in (0, math.inf) else 0
        if tenths > self._tenths_shown and n < self.total:
            self._tenths_shown = tenths
        elif now - self._last_line < self._interval_s:
            return
        self._last_line = now
        self._print(metrics())

    def finish(self, metrics: dict[str, str]) -> None:
        if self.leave:
            self._print(metrics, final=True)

    def _print(self, metrics: dict[str, str], final: bool = False) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._first_n) / elapsed
        parts = [f"{self.label}:"]
        if self.total == math.inf:
            parts.append(f"batch {self.n}")
        else:
            percent = 100 * self.n // self.total if self.total else 100
            parts.append(f"batch {self.n}/{int(self.total)} ({int(percent)}%)")
        parts.append(f"{rate:.1f} it/s")
        if final or self.n >= self.total:  # also when the epoch ended early (max_steps, should_stop)
            parts.append(f"took {_format_seconds(elapsed)}")
        elif self.total != math.inf and rate > 0:
            parts.append(f"ETA {_format_seconds((self.total - self.n) / rate)}")
        parts.extend(f"{k}={v}" for k, v in metrics.items())
        print(" ".join(parts), file=self._file, flush=True)


def _total(counts: list[int | float] | None) -> float:
    return float(sum(counts)) if counts else 0


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _format_value(value: Any) -> str:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, bool) or isinstance(value, int) or isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["ProgressBar"]
