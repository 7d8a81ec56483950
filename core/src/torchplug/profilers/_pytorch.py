"""PyTorchProfiler: torch.profiler around the run, with the Trainer's actions and the module's layers labelled."""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler import EventList, record_function
from torch.profiler import ProfilerAction, ProfilerActivity, tensorboard_trace_handler

from torchplug._errors import MisconfigurationError
from torchplug.profilers._base import Profiler

_KINETO_AVAILABLE = torch.profiler.kineto_available()
_STEP_KINDS = ("training_step", "validation_step", "test_step", "predict_step")


class RegisterRecordFunction:
    """Labels the forward of each submodule of ``model`` in torch.profiler traces as
    ``[pl][module]<module class path>: <submodule name>`` while the context is entered.

    :class:`PyTorchProfiler` does this for the running module (``record_module_names=True``); it works on its own
    too: ``with torch.profiler.profile() as prof, RegisterRecordFunction(model): model(x)``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._records: dict[str, record_function] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> RegisterRecordFunction:
        for name, module in self._model.named_modules():
            if not name:  # the model itself: its forward is the step, labelled by the Trainer's action
                continue
            label = f"[pl][module]{type(module).__module__}.{type(module).__name__}: {name}"
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._open, label)))
            self._handles.append(module.register_forward_hook(functools.partial(self._close, label)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _open(self, label: str, module: torch.nn.Module, args: Any) -> None:
        record = record_function(label)
        record.__enter__()
        self._records[label] = record

    def _close(self, label: str, module: torch.nn.Module, args: Any, output: Any) -> None:
        record = self._records.pop(label, None)
        if record is not None:
            record.__exit__(None, None, None)


class _PerStepKindSchedule:
    """A torch.profiler schedule run separately for each kind of step (training, validation, test, predict).

    torch's profiler counts every ``step()`` alike; in a ``fit`` training and validation steps interleave, so the
    given schedule is asked with the count of the current kind's steps instead, and a kind whose trace has been
    saved (``RECORD_AND_SAVE``) records nothing more. Validation steps of the sanity check (during ``fit``, before
    any training step) are not counted.
    """

    def __init__(self, schedule: Callable[[int], ProfilerAction]) -> None:
        self.schedule = schedule
        self.reset()

    def reset(self) -> None:
        self.counts = dict.fromkeys(_STEP_KINDS, 0)
        self.saved: set[str] = set()
        self.kind: str | None = None
        self.stage: str | None = None
        self.previous: ProfilerAction | None = None

    @property
    def num_step(self) -> int:
        return self.counts.get(self.kind, 0) if self.kind else 0

    def __call__(self, step_num: int) -> ProfilerAction:
        kind = self.kind
        if kind is None or kind in self.saved:
            return ProfilerAction.NONE
        if not (kind == "validation_step" and self.stage == "fit" and not self.counts["training_step"]):
            self.counts[kind] += 1
        action = self.schedule(self.counts[kind])
        if self.previous == ProfilerAction.RECORD and action == ProfilerAction.WARMUP:
            action = ProfilerAction.RECORD  # another kind is mid-recording: torch refuses RECORD -> WARMUP
        if action == ProfilerAction.RECORD_AND_SAVE:
            self.saved.add(kind)
        self.previous = action
        return action


def _record_always(step_num: int) -> ProfilerAction:
    return ProfilerAction.RECORD


@functools.lru_cache(1)
def _default_schedule() -> Callable[[int], ProfilerAction]:
    # one step skipped, one warm-up, three recorded: a trace of a few steps at negligible cost to the run
    return torch.profiler.schedule(wait=1, warmup=1, active=3)


class PyTorchProfiler(Profiler):
    """torch.profiler around the run: the cost of each operator, on the CPU and on the GPU.

    Every Trainer action is a ``record_function`` labelled ``[pl][profile]<action>`` (the steps are
    ``[pl][profile][Strategy]<Strategy>.training_step`` and so on), and with ``record_module_names`` the forward of
    each submodule is labelled too (:class:`RegisterRecordFunction`). Each ``*_step`` action is a profiler step: a
    ``schedule`` (default ``torch.profiler.schedule(wait=1, warmup=1, active=3)``) is run per kind of step, and the
    default one is replaced by "record everything" (with a warning) when a stage has fewer than 5 steps of a kind.
    ``schedule=None`` records everything. The events are ``function_events`` after ``describe()``; ``summary()``
    is torch's table of them.

    Args:
        dirpath, filename: where the report and the traces go (see :class:`Profiler`).
        group_by_input_shapes: group the table by input shapes (needs ``record_shapes=True``).
        emit_nvtx: emit NVTX ranges for ``nvprof``/Nsight instead of recording (needs CUDA).
        export_to_chrome: write each saved trace as ``<stage>-<filename>-<action>.*.pt.trace.json`` in ``dirpath``
            (chrome://tracing, Perfetto, TensorBoard).
        row_limit: rows of the table; ``-1`` for all.
        sort_by_key: the table's order, one of :attr:`AVAILABLE_SORT_KEYS`; default ``cuda_time_total`` when CUDA is
            profiled, else ``cpu_time_total``.
        record_module_names: label the module's submodules' forwards.
        table_kwargs: more keywords for ``EventList.table`` (``max_name_column_width``, ...).
        **profiler_kwargs: passed to ``torch.profiler.profile`` (``activities``, ``schedule``, ``on_trace_ready``,
            ``record_shapes``, ``profile_memory``, ``with_stack``, ...); plus ``export_to_flame_graph`` (write
            ``.stack`` files, ``metric`` chooses the time) .
    """

    STEP_FUNCTIONS = set(_STEP_KINDS)
    AVAILABLE_SORT_KEYS = {
        "cpu_time", "cuda_time", "cpu_time_total", "cuda_time_total", "cpu_memory_usage", "cuda_memory_usage",
        "self_cpu_memory_usage", "self_cuda_memory_usage", "count",
    }  # fmt: skip

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str | None = None,
        group_by_input_shapes: bool = False,
        emit_nvtx: bool = False,
        export_to_chrome: bool = True,
        row_limit: int = 20,
        sort_by_key: str | None = None,
        record_module_names: bool = True,
        table_kwargs: dict[str, Any] | None = None,
        **profiler_kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.profiler: Any = None
        self.function_events: EventList | None = None
        self._register: RegisterRecordFunction | None = None
        self._parent_profiler: Any = None
        self._recording_map: dict[str, record_function] = {}
        self._schedule: _PerStepKindSchedule | None = None
        if emit_nvtx and not torch.cuda.is_available():
            raise MisconfigurationError(
                "PyTorchProfiler(emit_nvtx=True) emits NVTX ranges for CUDA profilers, and CUDA is not available; "
                "use emit_nvtx=False to record with torch.profiler"
            )
        self._group_by_input_shapes = group_by_input_shapes and profiler_kwargs.get("record_shapes", False)
        self._emit_nvtx = emit_nvtx
        self._export_to_chrome = export_to_chrome
        self._row_limit = row_limit
        self._record_module_names = record_module_names
        self._profiler_kwargs = profiler_kwargs
        self._table_kwargs = dict(table_kwargs or {})
        self._sort_by_key = sort_by_key or _default_sort_key(profiler_kwargs)
        if self._sort_by_key not in self.AVAILABLE_SORT_KEYS:
            raise MisconfigurationError(
                f"Found sort_by_key: {self._sort_by_key}. Should be within {sorted(self.AVAILABLE_SORT_KEYS)}."
            )
        table_keys = set(inspect.signature(EventList.table).parameters) - {"self", "sort_by", "row_limit"}
        for key in self._table_kwargs:
            if key in ("sort_by", "row_limit"):
                raise KeyError(
                    f"Found invalid table_kwargs key: {key}. This is already a positional argument of the Profiler."
                )
            if key not in table_keys:
                raise KeyError(
                    f"Found invalid table_kwargs key: {key}. Should be within {sorted(table_keys)}."
                )

        self._default_schedule_used = False
        self._warned_short_schedule = False
        self._has_on_trace_ready = "on_trace_ready" in profiler_kwargs
        self._export_to_flame_graph = profiler_kwargs.get("export_to_flame_graph", False)
        self._metric = profiler_kwargs.get("metric", "self_cpu_time_total")
        if _KINETO_AVAILABLE:
            self._init_schedule_and_activities()

    def _init_schedule_and_activities(self) -> None:
        kwargs = self._profiler_kwargs
        schedule = kwargs.get("schedule", _default_schedule())
        if schedule is not None:
            if not callable(schedule):
                raise MisconfigurationError(f"Schedule should be a callable. Found: {schedule!r}")
            action = schedule(0)
            if not isinstance(action, ProfilerAction):
                raise MisconfigurationError(
                    f"Schedule should return a `torch.profiler.ProfilerAction`. Found: {action!r}"
                )
        self._default_schedule_used = "schedule" not in kwargs
        self._schedule = _PerStepKindSchedule(schedule) if schedule is not None else None
        kwargs["schedule"] = self._schedule
        kwargs["activities"] = kwargs.get("activities") or _default_activities()
        kwargs["with_stack"] = kwargs.get("with_stack", False) or self._export_to_flame_graph

    # ---------------------------------------------------------------------------------------------------- actions
    def start(self, action_name: str) -> None:
        if self.profiler is None:
            self._open_profiler()
        module = self._lightning_module
        if module is not None and self._register is None and self._record_module_names:
            self._register = RegisterRecordFunction(module)
            self._register.__enter__()
        if self.profiler is not None and action_name not in self._recording_map:
            recording = record_function("[pl][profile]" + action_name)
            recording.__enter__()
            self._recording_map[action_name] = recording

    def stop(self, action_name: str) -> None:
        recording = self._recording_map.pop(action_name, None)
        if recording is not None:
            recording.__exit__(None, None, None)
        if not _KINETO_AVAILABLE or self._emit_nvtx or self.profiler is None:
            return
        kind = next((kind for kind in _STEP_KINDS if action_name.endswith(kind)), None)
        if kind is None:
            return
        if self._schedule is not None:
            self._schedule.kind, self._schedule.stage = kind, self._stage
            if self._default_schedule_used and self._steps_of(kind) < 5:
                if not self._warned_short_schedule:
                    self._warned_short_schedule = True
                    warnings.warn(
                        "The PyTorch Profiler default schedule will be overridden as there is not enough steps to "
                        f"properly record traces (fewer than 5 {kind} calls): every step is recorded instead.",
                        UserWarning,
                        stacklevel=2,
                    )
                self._schedule = None
                self.profiler.schedule = _record_always
        if not self._has_on_trace_ready:
            self.profiler.on_trace_ready = functools.partial(self._export_trace, action_name)
        if self._schedule is not None:
            self.profiler.step_num = self._schedule.num_step
        self.profiler.step()

    def _steps_of(self, kind: str) -> float:
        """How many ``kind`` steps the running stage will make (``inf`` when unknown)."""
        module = self._lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        if trainer is None:
            return math.inf
        if kind == "training_step":
            return trainer.num_training_batches
        if kind == "validation_step":
            return sum(trainer.num_val_batches) + sum(trainer.num_sanity_val_batches)
        if kind == "test_step":
            return sum(trainer.num_test_batches)
        return sum(trainer.num_predict_batches)

    def _export_trace(self, action_name: str, profiler: Any) -> None:
        if self.dirpath is None:
            warnings.warn(
                "PyTorchProfiler: no trace written, as dirpath is None (pass dirpath=...)", stacklevel=2
            )
            return
        if self._export_to_chrome:
            tensorboard_trace_handler(str(self.dirpath), self._prepare_filename(action_name, extension=""))(
                profiler
            )
        if self._export_to_flame_graph:
            profiler.export_stacks(
                os.path.join(self.dirpath, self._prepare_filename(action_name, extension=".stack")),
                metric=self._metric,
            )

    # ---------------------------------------------------------------------------------------------------- report
    def summary(self) -> str:
        if not self._profiler_kwargs.get("enabled", True) or self._emit_nvtx:
            return ""
        self._close_profiler()
        if not self.function_events:
            return ""
        if self._export_to_chrome and not _KINETO_AVAILABLE:
            path = f"{self.local_rank}_trace.json"
            self.function_events.export_chrome_trace(
                path if self.dirpath is None else os.path.join(self.dirpath, path)
            )
        averages = self.function_events.key_averages(group_by_input_shapes=self._group_by_input_shapes)
        table = averages.table(sort_by=self._sort_by_key, row_limit=self._row_limit, **self._table_kwargs)
        return self._stats_to_str({"records": table})

    def teardown(self, stage: str | None) -> None:
        self._close_profiler()
        for recording in self._recording_map.values():
            recording.__exit__(None, None, None)
        self._recording_map = {}
        super().teardown(stage=stage)

    # ---------------------------------------------------------------------------------------------------- torch's
    def _open_profiler(self) -> None:
        if self._emit_nvtx:
            self._parent_profiler = torch.cuda.profiler.profile()
            self.profiler = self._make(torch.autograd.profiler.emit_nvtx)
        else:
            self.profiler = self._make(
                torch.profiler.profile if _KINETO_AVAILABLE else torch.autograd.profiler.profile
            )
        if self._schedule is not None:
            self._schedule.reset()
            self._schedule.stage = self._stage
        entered = self.profiler.__enter__()
        if entered is not None:
            self.profiler = entered
        if self._parent_profiler is not None:
            self._parent_profiler.__enter__()

    def _make(self, kind: Any) -> Any:
        accepted = inspect.signature(kind.__init__).parameters
        return kind(**{key: value for key, value in self._profiler_kwargs.items() if key in accepted})

    def _close_profiler(self) -> None:
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.__exit__(None, None, None)
            if not self._emit_nvtx:
                self.function_events = _events_of(profiler)
        if self._schedule is not None:
            self._schedule.reset()
        if self._parent_profiler is not None:
            self._parent_profiler.__exit__(None, None, None)
            self._parent_profiler = None
        if self._register is not None:
            self._register.__exit__(None, None, None)
            self._register = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(profiler=None, _register=None, _parent_profiler=None, _recording_map={})
        return state


def _events_of(profiler: Any) -> EventList | None:
    if isinstance(profiler, torch.profiler.profile):
        # nothing recorded (the schedule never reached RECORD): torch has no events to give
        return profiler.events() if profiler.profiler is not None else None
    return profiler.function_events


def _default_activities() -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])


def _default_sort_key(profiler_kwargs: dict[str, Any]) -> str:
    activities = profiler_kwargs.get("activities") or []
    cuda = ProfilerActivity.CUDA in activities if activities else torch.cuda.is_available()
    return "cuda_time_total" if cuda or profiler_kwargs.get("use_cuda") else "cpu_time_total"
