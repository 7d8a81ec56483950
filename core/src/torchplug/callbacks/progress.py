"""``ProgressBar``, the base of progress bars, and ``TQDMProgressBar``: tqdm bars in a terminal, plain periodic lines
anywhere else (CI logs, files, pipes)."""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, TextIO

import torch

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer

# Draw a terminal bar at most this often: metrics are read from the device only when a bar is drawn.
_MIN_DRAW_INTERVAL_S = 0.1
_PAD_SIZE = 5


def _tqdm_base() -> type:
    from tqdm import tqdm

    return tqdm


class ProgressBar(Callback):
    """The base of progress bars: subclass it to show progress your own way (Lightning's ``ProgressBar`` API).

    The Trainer keeps exactly one (``trainer.progress_bar_callback``); ``LightningModule.print`` goes through its
    :meth:`print` so that text does not break a bar. This base class shows nothing: it gives a subclass the counts
    (``total_train_batches``, ``total_val_batches_current_dataloader``, ...), the metrics to show
    (:meth:`get_metrics`), the descriptions, and the switches (``enable``/``disable``, ``is_enabled``). It is
    disabled on every process but global rank 0.
    """

    def __init__(self) -> None:
        self._trainer: Trainer | None = None
        self._enabled = True
        self._current_eval_dataloader_idx: int | None = None

    # ---------------------------------------------------------------------------------------------------- switches
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def disable(self) -> None:
        """Stop showing anything (the Trainer calls it on every process but global rank 0)."""
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar (``LightningModule.print`` comes here); this base class just prints."""
        print(*args, **kwargs)

    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._trainer = trainer
        if not trainer.is_global_zero:
            self.disable()  # one bar per job: rank 0's

    # ---------------------------------------------------------------------------------------------------- the run
    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise TypeError(f"The `{type(self).__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def pl_module(self) -> Module:
        return self.trainer.lightning_module

    sanity_check_description = "Sanity Checking"
    train_description = "Training"
    validation_description = "Validation"
    test_description = "Testing"
    predict_description = "Predicting"

    @property
    def total_train_batches(self) -> int | float:
        """Batches in this training epoch (``inf`` for a loader without a length and no ``max_steps``)."""
        trainer = self._trainer
        total = _count(getattr(trainer, "num_training_batches", 0))
        max_steps = getattr(trainer, "max_steps", -1)
        if total == math.inf and max_steps is not None and max_steps > 0:  # no length: the steps left
            return max_steps - trainer.global_step
        return total

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches of one validation run, every dataloader together (0 in an epoch that does not
        validate)."""
        trainer = self._trainer
        if trainer is None:
            return 0
        if getattr(trainer, "stage", None) == "fit" and not getattr(trainer, "sanity_checking", False):
            loop = getattr(trainer, "_loop", None)  # Lightning counts 0 in an epoch that does not validate
            if loop is not None and not (getattr(loop, "val_enabled", True) and loop._val_due_this_epoch()):
                return 0
        return _count(_total(getattr(trainer, "num_val_batches", [])))

    @property
    def total_test_batches(self) -> int | float:
        return _count(_total(getattr(self._trainer, "num_test_batches", [])))

    @property
    def total_predict_batches(self) -> int | float:
        return _count(_total(getattr(self._trainer, "num_predict_batches", [])))

    @property
    def total_val_batches_current_dataloader(self) -> int | float:
        """Batches of the validation dataloader running now (the sanity check's during the sanity check)."""
        return _count(_at(self._val_counts(), self._current_eval_dataloader_idx))

    @property
    def total_test_batches_current_dataloader(self) -> int | float:
        return _count(_at(getattr(self._trainer, "num_test_batches", []), self._current_eval_dataloader_idx))

    @property
    def total_predict_batches_current_dataloader(self) -> int | float:
        return _count(
            _at(getattr(self._trainer, "num_predict_batches", []), self._current_eval_dataloader_idx)
        )

    def _val_counts(self) -> list[int | float]:
        trainer = self._trainer
        if getattr(trainer, "sanity_checking", False):
            return list(getattr(trainer, "num_sanity_val_batches", []) or [])
        return list(getattr(trainer, "num_val_batches", []) or [])

    def has_dataloader_changed(self, dataloader_idx: int) -> bool:
        """Whether ``dataloader_idx`` is another evaluation dataloader than the last batch's (and remember it)."""
        changed = self._current_eval_dataloader_idx != dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return changed

    def reset_dataloader_idx_tracker(self) -> None:
        self._current_eval_dataloader_idx = None

    def get_metrics(self, trainer: Trainer, pl_module: Module | None = None) -> dict[str, Any]:
        """What a bar shows: :func:`get_standard_metrics` (``v_num``), then the ``prog_bar=True`` metrics.

        Override to change it. (Values may be device tensors: a bar reads them to the host when it draws.)
        """
        shown: dict[str, Any] = dict(
            getattr(trainer, "_progress_bar_metrics", None) or trainer.progress_bar_metrics
        )
        standard = get_standard_metrics(trainer)
        clashes = sorted(set(standard) & set(shown))
        if clashes:
            warnings.warn(
                f"The progress bar already shows {', '.join(map(repr, clashes))}: `self.log({clashes[0]!r}, ..., "
                "prog_bar=True)` replaces it there. Log it under another name, or override `get_metrics()` of the "
                "progress bar",
                UserWarning,
                stacklevel=2,
            )
        return {**standard, **shown}


def get_standard_metrics(trainer: Trainer) -> dict[str, int | str]:
    """The metrics every bar shows besides the logged ones: ``v_num``, the loggers' version (the last 4 characters of
    a string version; several loggers' distinct versions joined by ``_``), when there is one."""
    loggers = list(getattr(trainer, "loggers", None) or [])
    versions = list(dict.fromkeys(getattr(logger, "version", None) for logger in loggers))
    versions = [v for v in versions if v is not None and v != ""]
    if not versions:
        return {}
    version: int | str = versions[0] if len(versions) == 1 else "_".join(map(str, versions))
    if isinstance(version, str):
        version = version[-4:]
    return {"v_num": version}


class TQDMProgressBar(ProgressBar):
    """Show progress on global rank 0: epoch, batch i/N, it/s, ETA and the metrics logged with ``prog_bar=True``.

    It draws ``tqdm`` bars: one per training epoch, a transient one for validation, and one for
    ``validate``/``test``/``predict``. The Trainer's default bar (``enable_progress_bar=True`` and no bar among the
    callbacks) is ``TQDMProgressBar(plain=None)``: when stdout is not a terminal, \\r-redrawn bars would turn into
    unreadable noise, so it prints plain lines instead, each time another 10% of the epoch is done or
    ``line_interval_s`` seconds have passed, e.g. ``Epoch 0/2: batch 50/100 (50%) 812.3 it/s ETA 0:00:01 loss=0.123
    v_num=0``. ``plain=True``/``False`` forces one style (``False``, tqdm, is the default of an explicit
    ``TQDMProgressBar()``, as in Lightning). ``refresh_rate`` updates a terminal bar every N batches (0 hides it; the
    ``TQDM_MINITERS`` environment variable raises it, as in Lightning). ``leave=True`` keeps each epoch's bar.

    Lightning's ``TQDMProgressBar`` API: ``train_progress_bar``/``val_progress_bar``/``test_progress_bar``/
    ``predict_progress_bar`` (the bar last made of that kind: ``n``, ``total``, ``leave``, ``desc``),
    ``init_train_tqdm()`` and the other ``init_*_tqdm()`` (the tqdm a terminal bar is drawn with: override to style
    it), ``total_*_batches``, ``get_metrics(trainer, pl_module)``, ``is_enabled``/``is_disabled``, ``print``.
    """

    line_interval_s: float = 30.0

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = True, *,
                 plain: bool | None = False) -> None:  # fmt: skip
        super().__init__()
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise MisconfigurationError(
                f"ProgressBar(refresh_rate={refresh_rate!r}): use an int >= 0 (0 hides it)"
            )
        minimum = os.environ.get("TQDM_MINITERS")
        self.refresh_rate = max(int(minimum), refresh_rate) if minimum else refresh_rate
        self.process_position = process_position
        self.leave = leave
        self._plain_setting = plain
        self._active = False
        self._file: TextIO = sys.stdout
        self._plain = False
        self._bars: dict[str, _Progress] = {}
        self._made: dict[str, _Progress] = {}
        self._device_values: dict[str, str] = {}
        self._device_read_interval = -1
        self._metrics_takes_module: bool | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A trainer holding the bar must pickle and deep-copy: terminals, open bars and the trainer stay behind.
        state = dict(self.__dict__)
        state.update(_file=None, _bars={}, _made={}, _trainer=None, _active=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = sys.stdout

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.refresh_rate > 0

    # ---------------------------------------------------------------------------------------------------- lifecycle
    def setup(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # the other ranks count silently
        self._file = sys.stdout
        self._active = self.is_enabled
        isatty = getattr(self._file, "isatty", None)
        self._plain = self._plain_setting if self._plain_setting is not None else not (isatty and isatty())

    def teardown(self, trainer: Trainer, pl_module: Module, stage: str) -> None:
        self._close_all()

    def on_exception(self, trainer: Trainer, pl_module: Module, exception: BaseException) -> None:
        self._close_all()

    # ---------------------------------------------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: Trainer, pl_module: Module) -> None:
        self._open("train", self._epoch_label(trainer), self.total_train_batches, leave=self.leave)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self._bars.get("train")
        if bar is not None:
            if bar.train_done == 0 and batch_idx > 0:
                bar.resumed_at(batch_idx)  # resumed mid-epoch: the rate counts only batches run here
            bar.train_done = batch_idx + 1
            bar.advance_to(bar.train_done, self._metrics, force=False, every=self.refresh_rate)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("train", with_metrics=True)

    def on_train_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._close_all()

    # ---------------------------------------------------------------------------------------------------- evaluation
    def on_validation_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.reset_dataloader_idx_tracker()
        self._open_validation(trainer, 0)

    def _open_validation(self, trainer: Trainer, dataloader_idx: int) -> None:
        counts = self._val_counts()
        if trainer.sanity_checking:
            # a sanity check is not worth a line in a log: counted silently there
            label, total = self._per_dataloader(
                self.sanity_check_description, counts, _total(counts), dataloader_idx
            )
            self._open("val", label, total, leave=False, quiet=self._plain, sanity=True)
            return
        label, total = self._per_dataloader(
            self.validation_description, counts, self.total_val_batches, dataloader_idx
        )
        if getattr(trainer, "stage", None) == "fit":
            self._open("val", label, total, leave=False, quiet=True)
        else:
            self._open("val", label, total, leave=True)

    @staticmethod
    def _per_dataloader(
        label: str, counts: list[int | float], total: float, dataloader_idx: int
    ) -> tuple[str, float]:
        """With several dataloaders, each gets a bar of its own, named by its index (Lightning's bars)."""
        if len(counts) > 1:
            return f"{label} DataLoader {dataloader_idx}", _at(counts, dataloader_idx)
        return label, total

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx) and dataloader_idx > 0:
            self._finish("val", with_metrics=False)
            self._open_validation(trainer, dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bar = self._bars.get("val")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._no_metrics, force=False, every=self.refresh_rate)

    def on_validation_end(self, trainer: Trainer, pl_module: Module) -> None:
        bar = self._bars.get("val")
        self._finish("val", with_metrics=bar is not None and bar.leave)
        main = self._bars.get("train")
        if main is not None and main.shows and not trainer.sanity_checking:
            main.advance_to(main.n, self._metrics, force=True, every=1)  # show the fresh validation metrics

    def on_test_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.reset_dataloader_idx_tracker()
        self._open_evaluation("test", self.test_description, "num_test_batches", 0)

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx) and dataloader_idx > 0:
            self._finish("test", with_metrics=False)
            self._open_evaluation("test", self.test_description, "num_test_batches", dataloader_idx)

    def _open_evaluation(self, key: str, label: str, counts_name: str, dataloader_idx: int) -> None:
        counts = list(getattr(self._trainer, counts_name, None) or [])
        label, total = self._per_dataloader(label, counts, _total(counts), dataloader_idx)
        self._open(key, label, total, leave=True)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bar = self._bars.get("test")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._metrics, force=False, every=self.refresh_rate)

    def on_test_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("test", with_metrics=True)

    def on_predict_start(self, trainer: Trainer, pl_module: Module) -> None:
        self.reset_dataloader_idx_tracker()
        self._open_evaluation("predict", self.predict_description, "num_predict_batches", 0)

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: Module, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.has_dataloader_changed(dataloader_idx) and dataloader_idx > 0:
            self._finish("predict", with_metrics=False)
            self._open_evaluation("predict", self.predict_description, "num_predict_batches", dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: Module,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        bar = self._bars.get("predict")
        if bar is not None:
            bar.advance_to(bar.n + 1, self._no_metrics, force=False, every=self.refresh_rate)

    def on_predict_end(self, trainer: Trainer, pl_module: Module) -> None:
        self._finish("predict", with_metrics=False)

    # ---------------------------------------------------------------------------------------------------- Lightning's API
    @property
    def train_progress_bar(self) -> _Progress:
        return self._bar_of("train")

    @property
    def val_progress_bar(self) -> _Progress:
        return self._bar_of("val")

    @property
    def test_progress_bar(self) -> _Progress:
        return self._bar_of("test")

    @property
    def predict_progress_bar(self) -> _Progress:
        return self._bar_of("predict")

    def _bar_of(self, kind: str) -> _Progress:
        bar = self._made.get(kind)
        if bar is None:
            raise TypeError(
                f"The `{kind}_progress_bar` reference has not been set yet ({type(self).__name__})"
            )
        return bar

    def init_sanity_tqdm(self) -> Tqdm:
        return self._tqdm("Sanity Checking", leave=False, position=2 * self.process_position)

    def init_train_tqdm(self) -> Tqdm:
        return self._tqdm("Training", leave=self.leave, position=2 * self.process_position)

    def init_validation_tqdm(self) -> Tqdm:
        # inside fit the validation bar sits under the training bar and disappears when done
        fitting = getattr(self._trainer, "stage", None) == "fit"
        return self._tqdm("Validation", leave=not fitting, position=2 * self.process_position + int(fitting))

    def init_test_tqdm(self) -> Tqdm:
        return self._tqdm("Testing", leave=True, position=2 * self.process_position)

    def init_predict_tqdm(self) -> Tqdm:
        return self._tqdm("Predicting", leave=True, position=2 * self.process_position)

    def _tqdm(self, desc: str, leave: bool, position: int) -> Tqdm:
        file = self._file or sys.stdout
        try:
            columns, lines = os.get_terminal_size(file.fileno())
        except (AttributeError, OSError, ValueError):
            columns, lines = 0, 0
        return Tqdm(
            desc=desc, position=position, disable=self.is_disabled, leave=leave, file=file,
            # Follow resizes; a terminal that reports a 0x0 size (a fresh pty, some CI runners) would get no bar
            # at all from tqdm, so it gets a fixed 100x40 instead.
            dynamic_ncols=bool(columns and lines), ncols=None if columns else 100, nrows=None if lines else 40,
            smoothing=0,  # the epoch's average speed: steadier than tqdm's moving average, and what ETA needs
            mininterval=0,  # this class decides when to draw
        )  # fmt: skip

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print through ``tqdm.write``, which clears and redraws the active bars around the text (``end``/``file``
        pass on as ``print`` has them)."""
        Tqdm.write(sep.join(map(str, args)), **kwargs)

    def _metrics(self) -> dict[str, str]:
        assert self._trainer is not None
        trainer = self._trainer
        # A value on an accelerator is read (a device sync) at most once per logging interval, when the trainer
        # reads its logged values anyway; host values are shown fresh at every redraw.
        interval = trainer.global_step // max(getattr(trainer, "log_every_n_steps", 1), 1)
        fresh = not getattr(trainer, "training", False) or interval != self._device_read_interval
        shown: dict[str, str] = {}
        for name, value in self._read_metrics(trainer).items():
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

    def _read_metrics(self, trainer: Trainer) -> dict[str, Any]:
        if self._metrics_takes_module is None:
            try:
                self._metrics_takes_module = len(inspect.signature(self.get_metrics).parameters) >= 2
            except (TypeError, ValueError):
                self._metrics_takes_module = True
        if self._metrics_takes_module:
            return self.get_metrics(trainer, getattr(trainer, "lightning_module", None))
        return self.get_metrics(trainer)  # type: ignore[call-arg]  # an override from before Lightning's signature

    @staticmethod
    def _no_metrics() -> dict[str, str]:
        return {}

    def _finish(self, key: str, with_metrics: bool) -> None:
        bar = self._bars.pop(key, None)
        if bar is not None:
            bar.finish(self._metrics() if with_metrics and bar.shows else {})

    def _open(
        self, key: str, label: str, total: float, leave: bool, quiet: bool = False, sanity: bool = False
    ) -> None:
        previous = self._bars.pop(key, None)
        if previous is not None:
            previous.close()
        if not self._active or (quiet and self._plain and sanity):
            bar: _Progress = _Progress(label, total, leave)  # counts, shows nothing (disabled, not rank 0)
        elif self._plain:
            # In a log nothing is redrawn, so an epoch's closing line always stays (it is the one worth reading).
            leave = leave or key == "train"
            bar = _Lines(label, total, self._file, self.line_interval_s, quiet=quiet, leave=leave)
        else:
            make = {"train": self.init_train_tqdm, "test": self.init_test_tqdm, "predict": self.init_predict_tqdm,
                    "val": self.init_sanity_tqdm if sanity else self.init_validation_tqdm}[key]  # fmt: skip
            bar = _Bar(make(), label, total)
        self._bars[key] = self._made[key] = bar

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


class Tqdm(_tqdm_base()):  # type: ignore[misc]
    """tqdm with Lightning's number format for the metrics after the bar: floats padded to a steady width
    (``1.0`` → ``1.000``, ``0.1`` → ``0.100``), scientific notation kept short (``1e-5``)."""

    @staticmethod
    def format_num(n: Any) -> str:
        padded = isinstance(n, (float, str))
        text = n if isinstance(n, str) else _tqdm_base().format_num(n)
        if padded and "e" not in text:
            if "." not in text and len(text) < _PAD_SIZE:
                try:
                    float(text)
                except ValueError:
                    return text
                text += "."
            text += "0" * (_PAD_SIZE - len(text))
        return text


class _Progress:
    """One bar or one sequence of lines: counts batches and redraws when its policy says so. This base class only
    counts (a disabled bar, another rank's): ``n`` and ``total`` as Lightning's tqdm bars have them."""

    shows = False

    def __init__(self, label: str, total: float, leave: bool) -> None:
        self.desc, self.leave = label, leave
        self.total: int | float = int(total) if total != math.inf else math.inf
        self.n = 0
        self.train_done = 0

    def resumed_at(self, n: int) -> None: ...

    def advance_to(self, n: int, metrics: Any, force: bool, every: int) -> None:
        self.n = n

    def finish(self, metrics: dict[str, str]) -> None: ...
    def close(self) -> None: ...


class _Bar(_Progress):
    """A terminal bar, drawn by the tqdm that the callback's ``init_*_tqdm`` made."""

    shows = True

    def __init__(self, bar: Any, label: str, total: float) -> None:
        super().__init__(label, total, bool(getattr(bar, "leave", True)))
        bar.reset(total=None if total == math.inf else int(total))
        if label != "Training":
            bar.set_description(label, refresh=False)
        self._tqdm = bar
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
    shows = True

    def __init__(
        self, label: str, total: float, file: TextIO, interval_s: float, quiet: bool, leave: bool
    ) -> None:
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
        parts = [f"{self.desc}:"]
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


def _at(counts: list[int | float] | None, index: int | None) -> float:
    counts = list(counts or [])
    return counts[index or 0] if len(counts) > (index or 0) else 0


def _count(value: int | float) -> int | float:
    return value if value == math.inf else int(value)


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


__all__ = ["ProgressBar", "TQDMProgressBar", "Tqdm", "get_standard_metrics"]
