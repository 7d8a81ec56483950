"""The conformance checks that run Trainers, executed by the kit's worker process (:mod:`._worker`).

Each check is a function of a :class:`Context` that returns normally when the backend conforms, and raises
:class:`Failed` (a defect, named for the backend's author) or :class:`Skipped` (cannot run on this machine).
Checks that train in several processes run every fit in every rank: with a launcher that re-runs the command
(``ddp``), the other ranks run this same sequence of checks, so everything here is deterministic and only the
main process (:data:`MAIN`) judges and reports. What the ranks saw reaches it through files written by the
:class:`Recorder` callback, which is importable (and picklable) for launchers that pickle the run.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import pickle
import signal
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchplug import registry
from torchplug._errors import MisconfigurationError, PluginError, PluginLoadError, ProcessFailedError
from torchplug._hooks import hookimpl
from torchplug._selection import option_names
from torchplug._state import _same
from torchplug._types import ClusterInfo
from torchplug.callbacks._base import Callback
from torchplug.distributed import launched_child
from torchplug.testing._fixtures import QUIET, BoringModel, regression_data
from torchplug.trainer import Trainer
from torchplug.utilities import seed_everything

#: Whether this process judges and reports (the job's first process), or is another rank re-running the checks.
MAIN = not launched_child() and os.environ.get("RANK", "0") in ("", "0")

#: Which other kinds a backend is combined with, every installed and available backend of each.
MATRIX = {
    "accelerator": ("strategy", "precision"),
    "strategy": ("accelerator", "precision", "environment"),
    "precision": ("accelerator", "strategy"),
    "environment": ("strategy",),
}

#: A backend that answers one of these keeps state per rank: it gets the two-process checks too.
STATE_HOOKS = ("torchplug_state_dict", "torchplug_load_state_dict", "torchplug_get_rng_states",
               "torchplug_set_rng_states")  # fmt: skip

MAX_STEPS = 8  # two epochs of four batches per rank
SAVE_AT = 6  # a checkpoint inside the second epoch
BATCH_SIZE = 4
BATCHES_PER_EPOCH = 4
SHORT = 2  # steps of the runs that only need to work


class Failed(Exception):
    """The backend breaks the contract; the message says how, and what to do."""


class Skipped(Exception):
    """The check cannot run on this machine; the message says why."""


class KitInjectedFailure(RuntimeError):
    """Raised on purpose by the conformance kit, to see what the backend does with a failure."""


# ==================================================================================================== the model
class KitModel(BoringModel):
    """``BoringModel`` with dropout on its input, so that every step draws from the host's random generator."""

    def __init__(self, features: int = 4, lr: float = 0.1) -> None:
        super().__init__(features, lr)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.dropout(x))


def loader(world_size: int = 1) -> DataLoader:
    """Four shuffled batches per rank and epoch: the data order comes from the random generators too."""
    n = BATCH_SIZE * BATCHES_PER_EPOCH * world_size
    return DataLoader(regression_data(n, seed=0), batch_size=BATCH_SIZE, shuffle=True)


def loss_of(parameters: dict[str, torch.Tensor]) -> float:
    """The regression loss of the linear layer's parameters on the kit's data, in float32 on the CPU."""
    x, y = regression_data(BATCH_SIZE * BATCHES_PER_EPOCH, seed=0).tensors
    weight, bias = parameters["layer.weight"].float(), parameters["layer.bias"].float()
    return float(nn.functional.mse_loss(nn.functional.linear(x, weight, bias), y))


def parameters_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters as full CPU tensors of their own dtype (a sharded parameter is gathered)."""
    found = {}
    for name, parameter in module.named_parameters():
        tensor = parameter.detach()
        full = getattr(tensor, "full_tensor", None)  # DTensor: every rank takes part
        found[name] = (full() if callable(full) else tensor).cpu().clone()
    return found


# ==================================================================================================== callbacks
class Recorder(Callback):
    """Records, on every rank, the parameters after each step and the plugins' per-rank state when a checkpoint
    is saved and after one is restored; writes it to ``<directory>/<tag>-rank<r>.pt`` when training ends."""

    def __init__(self, directory: str, tag: str, save_at: int | None = None) -> None:
        self.directory, self.tag, self.save_at = directory, tag, save_at
        self._reset()

    def _reset(self) -> None:
        self.steps: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.saved_plugins: dict[str, Any] | None = None
        self.restored_plugins: dict[str, Any] | None = None
        self.start: dict[str, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "tag": self.tag, "save_at": self.save_at}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def checkpoint(self) -> str:
        return os.path.join(self.directory, f"{self.tag}.ckpt")

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.start = parameters_of(pl_module)
        self.restored_plugins = _plugin_states(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append((trainer.global_step, parameters_of(pl_module)))
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.checkpoint)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        ranks = checkpoint.get("ranks")
        self.saved_plugins = _detached(ranks[0]["plugins"]) if ranks else None

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "start": self.start,
            "steps": self.steps,
            "saved_plugins": self.saved_plugins,
            "restored_plugins": self.restored_plugins,
        }
        path = os.path.join(self.directory, f"{self.tag}-rank{trainer.global_rank}.pt")
        torch.save(record, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
        trainer.barrier("torchplug-kit-recorder")  # every rank's record exists before rank 0 reads them


class FailAt(Callback):
    """Makes global rank ``rank`` raise (or die by SIGKILL) at the end of optimizer step ``step``."""

    def __init__(self, rank: int, step: int, how: str) -> None:
        self.rank, self.step, self.how = rank, step, how

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KitInjectedFailure(injected_message(self.rank, self.step))


def injected_message(rank: int, step: int) -> str:
    return f"rank {rank} raised this on purpose at step {step} (torchplug conformance kit)"


class FailOnFitStart(Callback):
    """A failure after everything is set up (module wrapped, step operations bound), before the first batch."""

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        raise KitInjectedFailure("injected by the conformance kit in on_fit_start, after setup")


class FailInSetupModule:
    """An extra plugin whose ``torchplug_setup_module`` raises: setup stops after ``torchplug_setup_environment``
    and before the optimizers exist and the strategy wraps the module."""

    @hookimpl
    def torchplug_setup_module(self, trainer: Trainer, module: nn.Module) -> None:
        raise KitInjectedFailure("injected by the conformance kit in torchplug_setup_module, half way through setup")


class RankStateProbe:
    """An extra plugin whose state differs per rank (``{"rank": r, "steps": n}``): it must come back to each rank
    from a checkpoint through the strategy's save and load paths."""

    KEY = "torchplug_kit_probe"

    def __init__(self) -> None:
        self.steps = 0
        self.rank = -1

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        self.rank = trainer.global_rank

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Any:
        ops = yield
        step = ops.optimizer_step

        def counted_step(optimizer: Any, closure: Callable[[], Any], **kwargs: Any) -> bool:
            self.steps += 1
            return step(optimizer, closure, **kwargs)

        ops.optimizer_step = counted_step
        return ops

    @hookimpl
    def torchplug_state_dict(self, trainer: Trainer) -> dict[str, Any]:
        return {self.KEY: {"rank": self.rank, "steps": self.steps}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer: Trainer, states: Any) -> None:
        if self.KEY in states:
            self.steps = states[self.KEY]["steps"]
            self.rank = states[self.KEY]["rank"]


def _plugin_states(trainer: Trainer) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for answer in trainer.hook.torchplug_state_dict(trainer=trainer):
        if answer:
            merged.update(answer)
    return _detached(merged)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


# ==================================================================================================== the context
class Context:
    """The backend under test, where its runs write, and the Trainer arguments that select it here."""

    def __init__(self, kind: str, name: str, workdir: Path, pins: dict[str, Any], progress: Callable[[str], None]):
        self.kind, self.name, self.workdir, self.pins = kind, name, workdir, pins
        self.progress = progress if MAIN else (lambda what: None)
        self._runs: dict[str, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------------------------------------ the backend
    @functools.cached_property
    def backend(self) -> registry.Backend:
        try:
            return registry.find(self.kind, self.name)
        except MisconfigurationError as err:
            raise Failed(f"the {self.kind} {self.name!r} is not installed as torchplug finds backends: {err}") from None

    @functools.cached_property
    def cls(self) -> Any:
        try:
            return self.backend.load()
        except PluginLoadError as err:
            raise Failed(f"{err}\n{_trace(err.__cause__) if err.__cause__ else ''}".rstrip()) from None

    @property
    def label(self) -> str:
        return f"the {self.kind} {self.backend.name!r} ({self.backend.distribution} {self.backend.version})"

    def select(self, value: Any) -> dict[str, Any]:
        """Trainer keywords that select ``value`` (a name or an instance) as this backend's kind."""
        if self.kind == "environment":
            return {"plugins": [value]}
        return {self.kind: value}

    # ------------------------------------------------------------------------------------------------ where it runs
    def base_kwargs(self, tag: str) -> dict[str, Any]:
        root = self.workdir / tag
        return {**QUIET, "default_root_dir": str(root), "num_sanity_val_steps": 0}

    @functools.cached_property
    def home(self) -> dict[str, Any]:
        """The Trainer keywords of a one-device run of this backend on this machine; :class:`Skipped` if none."""
        return self._resolved("home", self._find_home)

    @functools.cached_property
    def multi(self) -> dict[str, Any]:
        """Trainer keywords of a two-process run of this backend (a strategy's own, else the first installed
        strategy that runs two processes here); :class:`Skipped` when nothing here runs two processes."""
        return self._resolved("multi", self._find_multi)

    def _resolved(self, key: str, find: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The main process decides; the other ranks read its decision (their environment, set by a launcher,
        is not the one the configuration was chosen in)."""
        path = self.workdir / "resolved.json"
        resolved = json.loads(path.read_text()) if path.exists() else {}
        if MAIN:
            resolved[key] = find()
            path.write_text(json.dumps(resolved))
        elif key not in resolved:
            raise Failed(f"a rank of a launched job found no {key} configuration decided by the main process")
        return resolved[key]

    def _find_home(self) -> dict[str, Any]:
        if not _available(self.cls):
            raise Skipped(f"{self.label} is not available on this machine (is_available() is False)")
        if self.kind == "environment" and not self.cls.detect():
            raise Skipped(
                f"{self.label} does not detect a job here (detect() is False): pass conformance(..., environ=...) "
                "the variables your scheduler sets for a job of one process, so the kit can run it"
            )
        refusals = []
        for candidate in self._candidates():
            kwargs = {"devices": 1, **candidate, **self.select(self.name), **self.pins}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    Trainer(**self.base_kwargs("home"), **kwargs)
            except MisconfigurationError as err:
                refusals.append(f"{_describe(candidate)}: {err}")
                continue
            return kwargs
        raise Skipped(f"{self.label} runs in no configuration available here: " + "; ".join(refusals))

    def _candidates(self) -> list[dict[str, Any]]:
        if self.kind == "accelerator":
            return [{"accelerator": self.name}]
        accelerators = [self.pins["accelerator"]] if "accelerator" in self.pins else available("accelerator")
        if self.kind in ("strategy", "precision"):
            return [{"accelerator": a} for a in accelerators]
        strategies = [self.pins["strategy"]] if "strategy" in self.pins else process_group_strategies()
        return [{"accelerator": a, "strategy": s} for a in accelerators for s in strategies or ["auto"]]

    def _find_multi(self) -> dict[str, Any]:
        home = self.home
        if self.kind == "environment":
            raise Skipped(
                "starting several processes is the scheduler's job: the kit runs the environment in a job of one "
                "process, as the scheduler would start it (environ=...)"
            )
        if self.kind != "strategy" and not any(hasattr(self.cls, hook) for hook in STATE_HOOKS):
            raise Skipped(
                f"{self.label} keeps no per-rank state (it answers none of {', '.join(STATE_HOOKS)}): the "
                "two-process checks run for strategies, and for backends whose state a checkpoint must keep per rank"
            )
        if self.kind == "strategy":
            candidates = [{}]
        elif "strategy" in self.pins:
            candidates = [{}]
        else:
            candidates = [{"strategy": s} for s in available("strategy")]
        refusals = []
        for candidate in candidates:
            kwargs = {**home, **candidate, "devices": 2}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trainer = Trainer(**self.base_kwargs("multi"), **kwargs)
            except MisconfigurationError as err:
                refusals.append(f"{_describe(candidate) or 'devices=2'}: {err}")
                continue
            if trainer.run.world_size == 2:
                return kwargs
            refusals.append(f"{_describe(candidate) or 'devices=2'} runs {trainer.run.world_size} process(es)")
        raise Skipped("no configuration here runs this backend in two processes: " + "; ".join(refusals))

    # ------------------------------------------------------------------------------------------------ runs
    def fit(self, tag: str, kwargs: dict[str, Any], *, steps: int = SHORT, model: Any = None,
            callbacks: tuple[Any, ...] = (), ckpt_path: str | None = None, seed: int = 0,
            doing: str | None = None) -> Trainer:  # fmt: skip
        """One ``fit`` of ``steps`` optimizer steps; the trainer it used.

        ``seed`` seeds the model's initial parameters; the run itself is always seeded with 0, as a script that
        resumes its own run would be (``seed_everything`` also seeds the distributed samplers' shuffling).
        """
        self.progress(doing or f"fit {tag!r}")
        world = 2 if kwargs.get("devices") == 2 else 1
        if model is None:
            seed_everything(seed)
            model = KitModel()
        seed_everything(0)
        trainer = Trainer(**self.base_kwargs(tag), **kwargs, max_steps=steps, callbacks=list(callbacks))
        trainer.fit(model, loader(world), ckpt_path=ckpt_path)
        return trainer

    def recorded(self, tag: str, kwargs: dict[str, Any], *, save_at: int | None = None, resume: str | None = None,
                 seed: int = 0, probe: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Every rank's record of a run of :data:`MAX_STEPS` steps (cached: each tag runs once per job)."""
        if tag not in self._runs:
            recorder = Recorder(str(self.workdir), tag, save_at)
            if probe:
                kwargs = {**kwargs, "plugins": [*kwargs.get("plugins", []), RankStateProbe()]}
            ckpt = os.path.join(str(self.workdir), f"{resume}.ckpt") if resume else None
            doing = f"fit() of {MAX_STEPS} steps"
            if resume:
                doing = f"fit() resumed from the checkpoint saved after step {SAVE_AT}"
            elif save_at:
                doing = f"fit() of {MAX_STEPS} steps that saves a checkpoint after step {save_at}"
            if kwargs.get("devices") == 2:
                doing += " in two processes"
            self.fit(tag, kwargs, steps=MAX_STEPS, callbacks=(recorder,), ckpt_path=ckpt, seed=seed, doing=doing)
            self._runs[tag] = read_records(self.workdir, tag, 2 if kwargs.get("devices") == 2 else 1)
        return self._runs[tag]


def read_records(directory: Path, tag: str, world_size: int) -> list[dict[str, Any]]:
    records = []
    for rank in range(world_size):
        path = directory / f"{tag}-rank{rank}.pt"
        if not path.exists():
            raise Failed(f"rank {rank} of the run {tag!r} did not reach the end of training (on_train_end)")
        records.append(torch.load(path, weights_only=False))
    return records


def available(kind: str) -> list[str]:
    """Installed backends of ``kind`` that import and say they are available here; the CPU first."""
    names = []
    for backend in registry.discover(kind):
        try:
            if _available(backend.load()):
                names.append(backend.name)
        except Exception:  # noqa: BLE001 - another package's broken backend is not this check's business
            continue
    return sorted(names, key=lambda n: (n != "cpu", n))


def process_group_strategies() -> list[str]:
    """Installed, available strategies that read the cluster environment (``needs_cluster_environment``)."""
    found = []
    for name in available("strategy"):
        if getattr(registry.load("strategy", name), "needs_cluster_environment", False):
            found.append(name)
    return found


def _available(cls: Any) -> bool:
    probe = getattr(cls, "is_available", None)
    return bool(probe()) if callable(probe) else True


def _describe(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


@contextmanager
def expected_failure() -> Iterator[list[BaseException]]:
    """Catch what the block raises into the yielded list, in the main process; other ranks let it end them, as it
    would end a user's script (their launcher must see them fail)."""
    caught: list[BaseException] = []
    try:
        yield caught
    except Exception as err:  # noqa: BLE001
        if not MAIN:
            raise
        caught.append(err)


def _trace(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip()


def _first_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str | None:
    for name in a:
        x, y = a[name], b.get(name)
        if y is None or x.shape != y.shape or x.dtype != y.dtype:
            return f"{name}: {tuple(x.shape)} {x.dtype} against {None if y is None else (tuple(y.shape), y.dtype)}"
        if not torch.equal(x, y):
            delta = (x.double() - y.double()).abs().max().item()
            return f"{name} differs (largest difference {delta:.3g})"
    return None


# ==================================================================================================== selection
def check_selected_by_name(ctx: Context) -> None:
    home = ctx.home
    for name in ctx.backend.names:
        trainer = Trainer(**ctx.base_kwargs("by-name"), **{**home, **ctx.select(name)})
        selected = _selected(ctx, trainer)
        if isinstance(ctx.cls, type) and not isinstance(selected[1], ctx.cls):
            raise Failed(f"{ctx.kind}={name!r} selected {type(selected[1]).__name__}, not {ctx.backend.value}")
        if selected[0] != ctx.backend.name:
            raise Failed(
                f"{ctx.kind}={name!r} is recorded as {selected[0]!r} in trainer.run; expected the primary name "
                f"{ctx.backend.name!r} (the longest of the names one entry-point object has)"
            )
        if ctx.kind == "accelerator" and trainer.run.device_type != ctx.cls.device_type:
            raise Failed(f"trainer.run.device_type is {trainer.run.device_type!r}, the class declares {ctx.cls.device_type!r}")


def _selected(ctx: Context, trainer: Trainer) -> tuple[str | None, Any]:
    return {
        "accelerator": (trainer.run.accelerator, trainer.accelerator),
        "strategy": (trainer.run.strategy, trainer.strategy),
        "precision": (trainer.run.precision, trainer.precision_plugin),
        "environment": (trainer.run.environment, trainer.environment),
    }[ctx.kind]


def _instance(ctx: Context) -> Any:
    try:
        return ctx.cls()
    except MisconfigurationError as err:
        raise Skipped(f"{ctx.label} refuses to be created here: {err}") from None
    except TypeError as err:
        raise Failed(
            f"{ctx.backend.value}() cannot be created without arguments ({err}): give every option a default, so "
            f"that Trainer({ctx.kind}={ctx.name!r}) can create it"
        ) from None


def check_selected_by_instance(ctx: Context) -> None:
    home = ctx.home
    instance = _instance(ctx)
    try:
        trainer = Trainer(**ctx.base_kwargs("by-instance"), **{**home, **ctx.select(instance)})
    except MisconfigurationError as err:
        raise Failed(f"Trainer({ctx.kind}={type(instance).__name__}()) was refused: {err}") from None
    name, selected = _selected(ctx, trainer)
    if selected is not instance:
        raise Failed(f"Trainer({ctx.kind}=<instance>) registered {selected!r}, not the instance it was given")
    if name != ctx.backend.name:
        raise Failed(
            f"Trainer({ctx.kind}=<instance>) is recorded as {name!r} in trainer.run; an instance of the class that "
            f"the entry point {ctx.backend.name!r} names is expected to carry that name"
        )
    ctx.fit("by-instance", {**home, **ctx.select(instance)})


def check_picklable(ctx: Context) -> None:
    instance = _instance(ctx)
    _round_trip(ctx, instance, "as created")
    try:
        home = ctx.home
    except Skipped:
        return
    Trainer(**ctx.base_kwargs("pickled"), **{**home, **ctx.select(instance)})
    _round_trip(ctx, instance, "once a Trainer has selected it (after torchplug_configure)")


def _round_trip(ctx: Context, instance: Any, when: str) -> None:
    try:
        pickle.loads(pickle.dumps(instance))
    except Exception as err:  # noqa: BLE001 - pickle raises PicklingError, TypeError, AttributeError, ...
        raise Failed(
            f"{ctx.label} cannot be pickled {when} ({type(err).__name__}: {err}). A spawn-style launch "
            f"(ddp_spawn, xla) sends Trainer({ctx.kind}=<instance>) to every process by pickling it: create "
            "unpicklable things (locks, open files, process groups, wrapped modules) in setup hooks, or drop them "
            "in __getstate__"
        ) from None


# ==================================================================================================== options
_TRAINER_FLAGS = frozenset(inspect.signature(Trainer.__init__).parameters) - {"self", "backend_options"}


def _options(ctx: Context) -> list[str]:
    return sorted(option_names(ctx.cls))


def check_options_reach_the_backend(ctx: Context) -> None:
    # A precision's own `precision` option is the Trainer's precision: selection passes the name it chose.
    names = [n for n in _options(ctx) if not (ctx.kind == "precision" and n == "precision")]
    shadowed = sorted(set(names) & _TRAINER_FLAGS)
    if shadowed:
        raise Failed(
            f"{ctx.label} takes {', '.join(map(repr, shadowed))}, which the Trainer takes itself, so "
            f"Trainer({shadowed[0]}=...) never reaches the backend: rename the option, prefixed with the backend's "
            f"name ({ctx.name.replace('-', '_')}_{shadowed[0]})"
        )
    if not names:
        raise Skipped(f"{ctx.label} takes no options")
    home = ctx.home
    for option in names:
        declaring, default = _declaration(ctx.cls, option)
        if default is inspect.Parameter.empty:
            continue  # required options are given by every Trainer of the backend; nothing to route here
        with _recording_inits(ctx.cls) as received:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    Trainer(**ctx.base_kwargs("options"), **home, **{option: default})
            except MisconfigurationError as err:
                raise Failed(f"Trainer({option}={default!r}) (the option's own default) was refused: {err}") from None
        if option not in received.get(declaring, {}):
            chain = " -> ".join(k.__qualname__ for k in inspect.getmro(ctx.cls) if "__init__" in k.__dict__ and k is not object)
            raise Failed(
                f"Trainer({option}={default!r}) never reached {declaring.__qualname__}.__init__, which declares it "
                f"(constructors: {chain}). A constructor that takes **kwargs is given its base class's options by "
                "the Trainer: it must pass them on, super().__init__(**kwargs)"
            )


def _declaration(cls: type, option: str) -> tuple[type, Any]:
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(option)
        if parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            return klass, parameter.default
    return cls, inspect.Parameter.empty


@contextmanager
def _recording_inits(cls: type) -> Iterator[dict[type, dict[str, Any]]]:
    """While active, each ``__init__`` in ``cls``'s MRO records the arguments it was explicitly given."""
    received: dict[type, dict[str, Any]] = {}
    originals = {}
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object or not inspect.isfunction(init):
            continue

        def recording(self: Any, *args: Any, __init: Any = init, __klass: type = klass, **kwargs: Any) -> None:
            try:
                bound = inspect.signature(__init).bind(self, *args, **kwargs).arguments
            except TypeError:
                bound = dict(kwargs)
            received.setdefault(__klass, {}).update(bound)
            __init(self, *args, **kwargs)

        originals[klass] = init
        klass.__init__ = functools.wraps(init)(recording)  # the same signature: the Trainer routes by it
    try:
        yield received
    finally:
        for klass, init in originals.items():
            klass.__init__ = init


def _misspelling(name: str, taken: set[str]) -> str:
    for candidate in (name[:-1], name + "s", name[1:] + name[0], f"{name}_typo"):
        if candidate and candidate not in taken and candidate not in _TRAINER_FLAGS and candidate.isidentifier():
            return candidate
    return f"{name}_typo"


def check_misspelled_options_are_refused(ctx: Context) -> None:
    names = _options(ctx)
    prefix = ctx.name.replace("-", "_")
    typo = _misspelling(names[0] if names else f"{prefix}_option", set(names))
    home = ctx.home
    try:
        Trainer(**ctx.base_kwargs("typo"), **home, **{typo: 1})
    except MisconfigurationError as err:
        if typo not in str(err):
            raise Failed(f"Trainer({typo}=1) was refused, but the message does not name {typo!r}: {err}") from None
    else:
        raise Failed(
            f"Trainer({typo}=1), a misspelling of {names[0] if names else 'an option'}, was accepted: a misspelled "
            "option must be refused with the core's error (declare options as named parameters of __init__)"
        )
    try:
        ctx.cls(**{typo: 1})
    except (TypeError, MisconfigurationError):
        return
    raise Failed(
        f"{ctx.backend.value}({typo}=1) was accepted, so a misspelled option of "
        f"Trainer({ctx.kind}={type(ctx.cls).__name__ if not isinstance(ctx.cls, type) else ctx.cls.__name__}(...)) "
        "is silently ignored: refuse unknown keywords (no catch-all **kwargs, or pass them to a base class that "
        "refuses them)"
    )


# ==================================================================================================== training
def check_trains(ctx: Context) -> None:
    records = ctx.recorded("uninterrupted", ctx.home)
    _judge_training(ctx, records)


def check_trains_in_processes(ctx: Context) -> None:
    records = ctx.recorded("uninterrupted-2", ctx.multi)
    _judge_training(ctx, records)
    ranks = sorted(r["rank"] for r in records)
    if ranks != [0, 1] or any(r["world_size"] != 2 for r in records):
        raise Failed(f"the two processes reported ranks {ranks} and world sizes {[r['world_size'] for r in records]}")


def _judge_training(ctx: Context, records: list[dict[str, Any]]) -> None:
    for record in records:
        steps = [step for step, _ in record["steps"]]
        if steps != list(range(1, MAX_STEPS + 1)):
            raise Failed(f"rank {record['rank']} counted the steps {steps}; expected 1 to {MAX_STEPS}")
        final = record["steps"][-1][1]
        if not all(torch.isfinite(p).all() for p in final.values()):
            raise Failed(f"rank {record['rank']} ended with non-finite parameters")
        before, after = loss_of(record["start"]), loss_of(final)
        if not after < 0.5 * before:
            raise Failed(
                f"the kit's regression model did not learn on rank {record['rank']}: loss {before:.4g} before "
                f"training, {after:.4g} after {MAX_STEPS} SGD steps (expected below half)"
            )


def check_checkpoint_round_trip(ctx: Context) -> None:
    home = ctx.home
    recorder = Recorder(str(ctx.workdir), "round-trip", save_at=SHORT)
    ctx.fit("round-trip", home, callbacks=(recorder,))
    saved = {name: tensor for name, tensor in _records_after(ctx, "round-trip", 1)[0]["steps"][-1][1].items()}
    path = recorder.checkpoint
    if os.path.isfile(path):
        from torchplug import load_checkpoint

        checkpoint = load_checkpoint(path)
        if len(checkpoint.get("ranks", [])) != 1:
            raise Failed(f"the checkpoint holds {len(checkpoint.get('ranks', []))} per-rank entries for a run of 1")
    elif not os.path.exists(path):
        raise Failed(f"trainer.save_checkpoint({path!r}) wrote nothing at that path")
    seed_everything(1)
    fresh = KitModel()
    ctx.progress("validate from the checkpoint")
    metrics = Trainer(**ctx.base_kwargs("round-trip-validate"), **home).validate(fresh, loader(), ckpt_path=path)
    restored = parameters_of(fresh)
    difference = _first_difference(saved, restored)
    if difference:
        raise Failed(f"validate(ckpt_path=...) did not restore the saved parameters: {difference}")
    if not metrics or not math.isfinite(float(metrics[0].get("val_loss", math.nan))):
        raise Failed(f"validate(ckpt_path=...) returned {metrics!r}; expected a finite val_loss")


def _records_after(ctx: Context, tag: str, world_size: int) -> list[dict[str, Any]]:
    return read_records(ctx.workdir, tag, world_size)


def check_resumes_bitwise(ctx: Context) -> None:
    _judge_resume(ctx, ctx.home, "")


def check_resumes_bitwise_in_processes(ctx: Context) -> None:
    _judge_resume(ctx, ctx.multi, "-2")


def _judge_resume(ctx: Context, kwargs: dict[str, Any], suffix: str) -> None:
    reference = ctx.recorded(f"uninterrupted{suffix}", kwargs)
    saving = ctx.recorded(f"saving{suffix}", kwargs, save_at=SAVE_AT, probe=True)
    resumed = ctx.recorded(f"resumed{suffix}", kwargs, resume=f"saving{suffix}", seed=1, probe=True)
    for ref, save, res in zip(reference, saving, resumed):
        rank = ref["rank"]
        for (step, expected), (_, parameters) in zip(ref["steps"], save["steps"]):
            difference = _first_difference(expected, parameters)
            if difference and step <= SAVE_AT:
                raise Failed(
                    f"two runs from the same seed differ on rank {rank} after step {step}, before any checkpoint: "
                    f"{difference}. A random generator that torchplug.seed_everything does not seed (it seeds "
                    "torch's, Python's and NumPy's; a device generator must follow torch's seed), or a computation "
                    "that is not deterministic"
                )
            if difference:
                raise Failed(
                    f"saving a checkpoint after step {SAVE_AT} changed the training on rank {rank}: after step "
                    f"{step} {difference}"
                )
        steps = [step for step, _ in res["steps"]]
        if steps != list(range(SAVE_AT + 1, MAX_STEPS + 1)):
            raise Failed(
                f"resuming from step {SAVE_AT} (inside an epoch), rank {rank} ran the steps {steps}; expected "
                f"{SAVE_AT + 1} to {MAX_STEPS}"
            )
        expected = dict(ref["steps"])
        for step, parameters in res["steps"]:
            difference = _first_difference(expected[step], parameters)
            if difference:
                hint = ""
                others = [r for r in saving if r["rank"] != rank]
                if others and _first_difference(dict(save["steps"])[SAVE_AT], dict(others[0]["steps"])[SAVE_AT]):
                    hint = (
                        " The ranks' parameters differed when the checkpoint was saved, and its state_dict holds "
                        "one copy: parameters that differ per rank are state to save per rank."
                    )
                raise Failed(
                    f"resuming mid-epoch is not bitwise exact: on rank {rank}, after step {step} (the checkpoint was "
                    f"saved after step {SAVE_AT}) {difference}, compared with the uninterrupted run. Something that "
                    "affects training is not saved or not restored: plugin state (torchplug_state_dict / "
                    "torchplug_load_state_dict) or a random generator (torchplug_get_rng_states / "
                    f"torchplug_set_rng_states).{hint}"
                )


def check_per_rank_state(ctx: Context) -> None:
    kwargs = ctx.multi
    saving = ctx.recorded("saving-2", kwargs, save_at=SAVE_AT, probe=True)
    path = ctx.workdir / "saving-2.ckpt"
    if path.is_file():
        from torchplug import load_checkpoint

        ranks = load_checkpoint(path).get("ranks", [])
        if len(ranks) != 2:
            raise Failed(
                f"the checkpoint of a two-process run holds the per-rank state of {len(ranks)} rank(s): the other "
                "ranks' plugin state and random generators are lost. torchplug_save_checkpoint must gather every "
                "rank's checkpoint['ranks'] entry (torchplug_gather_objects), as the default does"
            )
    resumed = ctx.recorded("resumed-2", kwargs, resume="saving-2", seed=1, probe=True)
    for save, res in zip(saving, resumed):
        rank = save["rank"]
        if save["saved_plugins"] is None:
            raise Failed(f"rank {rank} made no checkpoint (on_save_checkpoint did not run there)")
        lost = [
            f"{key!r}: saved {value!r}, restored {res['restored_plugins'].get(key)!r}"
            for key, value in save["saved_plugins"].items()
            if not _same(value, res["restored_plugins"].get(key))
        ]
        if lost:
            raise Failed(
                f"rank {rank} did not get its own plugin state back from the checkpoint ({'; '.join(lost)}). State "
                "is kept per rank: every rank's torchplug_state_dict answer must be saved (gathered into "
                "checkpoint['ranks']) and handed back to that rank's torchplug_load_state_dict"
            )


def check_two_fits_in_one_process(ctx: Context) -> None:
    home = ctx.home
    import torch.distributed as dist

    group_before = dist.is_available() and dist.is_initialized()
    first = ctx.fit("first", home, doing="the first fit() of the process")
    threads_after_first = _threads()
    seed_everything(0)
    model = KitModel()
    start = parameters_of(model)
    second = ctx.fit("second", home, model=model, steps=MAX_STEPS, doing="the second fit() of the process (a new Trainer)")
    ctx.progress("validate() after fit()")
    metrics = second.validate(model, loader(), verbose=False)
    for label, trainer, steps in (("first", first, SHORT), ("second", second, MAX_STEPS)):
        if trainer.global_step != steps:
            raise Failed(f"the {label} fit of the process stopped at step {trainer.global_step} of {steps}")
    if not _first_difference(start, parameters_of(model)):
        raise Failed(f"the second fit in the process did not change the model's parameters in {MAX_STEPS} steps")
    if not metrics or not math.isfinite(float(metrics[0].get("val_loss", math.nan))):
        raise Failed(f"validate() after fit() returned {metrics!r}; expected a finite val_loss")
    _judge_threads(threads_after_first, "the first")
    if ctx.kind != "strategy" and not group_before and dist.is_available() and dist.is_initialized():
        strategy = first.strategy_name
        if not getattr(first.strategy, "needs_cluster_environment", False):
            raise Failed(f"a torch.distributed process group exists after runs with strategy {strategy!r}: {ctx.label} made it and left it")


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _judge_threads(before: set[threading.Thread], which: str) -> None:
    grown = [t for t in threading.enumerate() if t not in before]
    stuck = [t for t in grown if not t.daemon]
    if stuck:
        raise Failed(
            f"thread(s) {', '.join(repr(t.name) for t in stuck)} started during the runs are still running after "
            "teardown and are not daemons, so a script could not exit: stop them in torchplug_teardown"
        )
    if grown:
        raise Failed(
            f"each fit leaves more threads running: {', '.join(repr(t.name) for t in grown)} appeared after "
            f"{which} fit and are still running after teardown; stop them in torchplug_teardown"
        )


def check_teardown_after_failed_setup(ctx: Context) -> None:
    home = ctx.home
    threads_before = _threads()
    for where, extra in (
        ("torchplug_setup_module", {"plugins": [*home.get("plugins", []), FailInSetupModule()]}),
        ("on_fit_start", {"callbacks": (FailOnFitStart(),)}),
    ):
        kwargs = {**home, **{k: v for k, v in extra.items() if k == "plugins"}}
        callbacks = extra.get("callbacks", ())
        with expected_failure() as caught:
            ctx.fit(f"failing-{where}", kwargs, callbacks=callbacks, doing=f"a fit() that fails in {where}")
        if not caught:
            raise Failed(f"a failure injected in {where} did not make fit() fail")
        error = caught[0]
        if not _is_injected(error):
            raise Failed(
                f"setup stopped half way (a failure injected in {where}), and fit() then raised "
                f"{type(error).__name__} instead of the injected failure: tearing down after a half-done setup "
                f"failed. torchplug_teardown must not raise when setup did not finish.\n{_trace(error)}"
            )
    try:
        trainer = ctx.fit("after-failures", home, doing="the fit() after the failed setups")
    except Exception as err:  # noqa: BLE001
        raise Failed(f"the fit after a failed setup failed: {type(err).__name__}: {err}\n{_trace(err)}") from None
    if trainer.global_step != SHORT:
        raise Failed(f"the fit after a failed setup stopped at step {trainer.global_step} of {SHORT}")
    stuck = [t for t in threading.enumerate() if t not in threads_before and not t.daemon]
    if stuck:
        raise Failed(f"non-daemon thread(s) {', '.join(repr(t.name) for t in stuck)} left running after the failed setups")


def _is_injected(error: BaseException) -> bool:
    if isinstance(error, KitInjectedFailure):
        return True
    # a launcher that runs the stage in other processes reports the failure of the rank that had it
    return isinstance(error, ProcessFailedError) and f"raised {KitInjectedFailure.__name__}: injected" in str(error)


# ==================================================================================================== failing ranks
def check_rank_that_raises(ctx: Context) -> dict[str, Any]:
    kwargs = ctx.multi
    with expected_failure() as caught:
        ctx.fit("rank-raises", kwargs, steps=MAX_STEPS, callbacks=(FailAt(1, SHORT, "raise"),),
                doing="a two-process fit() whose rank 1 raises at step 2")
    return _judge_failed_rank(caught, "raised KitInjectedFailure at step 2", expect=injected_message(1, SHORT))


def check_rank_that_dies(ctx: Context) -> dict[str, Any]:
    kwargs = ctx.multi
    with expected_failure() as caught:
        ctx.fit("rank-dies", kwargs, steps=MAX_STEPS, callbacks=(FailAt(1, SHORT, "kill"),),
                doing="a two-process fit() whose rank 1 is killed (SIGKILL) at step 2")
    return _judge_failed_rank(caught, "was killed by SIGKILL at step 2", expect="SIGKILL")


def _judge_failed_rank(caught: list[BaseException], what: str, expect: str) -> dict[str, Any]:
    if not caught:
        raise Failed(f"rank 1 {what}, and fit() returned normally: the failure was lost")
    error = caught[0]
    if not isinstance(error, ProcessFailedError):
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise Failed(
            f"rank 1 {what}; fit() raised {type(error).__name__} ({first_line}) instead of "
            "torchplug.ProcessFailedError naming rank 1, the root cause (torchplug.distributed.launch and spawn "
            f"report a failed rank that way):\n{_trace(error)}"
        )
    message = str(error)
    if "rank 1" not in message or expect not in message:
        raise Failed(f"rank 1 {what}; the ProcessFailedError does not say so: {message}")
    if expect != "SIGKILL" and "Traceback (most recent call last)" not in message:
        raise Failed(f"rank 1 {what}; the ProcessFailedError names it but does not carry its traceback: {message}")
    return {"message": message}


# ==================================================================================================== accelerators, environments
def check_auto_accelerator(ctx: Context) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer = Trainer(**ctx.base_kwargs("auto"))
        except Exception as err:  # noqa: BLE001
            raise Failed(f"Trainer() (accelerator='auto') failed with this accelerator installed: {type(err).__name__}: {err}") from None
    about = [str(w.message) for w in caught if repr(ctx.name) in str(w.message)]
    if about:
        raise Failed(f"accelerator='auto' warned about {ctx.label}: {about[0]}")
    best = _best_available()
    if best == ctx.backend.name and trainer.accelerator_name != ctx.backend.name:
        raise Failed(f"accelerator='auto' chose {trainer.accelerator_name!r} over the available {ctx.name!r} of higher priority")


def _best_available() -> str | None:
    best: tuple[int, str] | None = None
    for name in available("accelerator"):
        priority = getattr(registry.load("accelerator", name), "priority", 0)
        if best is None or priority > best[0]:
            best = (priority, name)
    return best[1] if best else None


def check_detected(ctx: Context) -> None:
    ctx.home  # noqa: B018 - skips unless detect() is true here
    strategies = process_group_strategies()
    if not strategies:
        raise Skipped("no installed strategy reads a cluster environment (needs_cluster_environment)")
    accelerator = ctx.home.get("accelerator", "cpu")
    trainer = Trainer(**ctx.base_kwargs("detected"), accelerator=accelerator, strategy=strategies[0], devices=1)
    if trainer.environment_name != ctx.backend.name:
        chosen = registry.load("environment", trainer.environment_name) if trainer.environment_name else None
        raise Failed(
            f"where {ctx.label} detects its job, detection chose {trainer.environment_name!r} (detect_order "
            f"{getattr(chosen, 'detect_order', '?')}) instead; environments are tried in increasing detect_order "
            f"and {ctx.name!r} has {getattr(ctx.cls, 'detect_order', '?')}: set a lower detect_order (local, the "
            "fallback that always detects, has 30)"
        )


def check_cluster_info(ctx: Context) -> None:
    trainer = Trainer(**ctx.base_kwargs("cluster-info"), **ctx.home)
    info = trainer.hook.torchplug_cluster_info(trainer=trainer)
    if not isinstance(info, ClusterInfo):
        raise Failed(f"torchplug_cluster_info answered {info!r}; expected a torchplug.ClusterInfo")
    problems = []
    if not 0 <= info.global_rank < info.world_size:
        problems.append(f"global_rank {info.global_rank} is not in 0..world_size-1 ({info.world_size})")
    if not 0 <= info.local_rank <= info.global_rank:
        problems.append(f"local_rank {info.local_rank} is not in 0..global_rank ({info.global_rank})")
    if not 0 <= info.node_rank < info.num_nodes:
        problems.append(f"node_rank {info.node_rank} is not in 0..num_nodes-1 ({info.num_nodes})")
    if not (isinstance(info.main_port, int) and 0 < info.main_port < 65536):
        problems.append(f"main_port {info.main_port!r} is not a TCP port")
    if not (isinstance(info.main_address, str) and info.main_address):
        problems.append(f"main_address {info.main_address!r} is not a host")
    if problems:
        raise Failed("torchplug_cluster_info answered an inconsistent ClusterInfo: " + "; ".join(problems))


# ==================================================================================================== the matrix
def check_combination(ctx: Context, kind: str, name: str) -> None:
    home = ctx.home
    try:
        backend = registry.find(kind, name)
        cls = backend.load()
    except (PluginLoadError, MisconfigurationError) as err:
        raise Skipped(f"the {kind} {name!r} cannot be loaded: {err}") from None
    other = f"the {kind} {name!r} ({backend.distribution} {backend.version})"
    try:
        if not _available(cls):
            raise Skipped(f"{other} is not available on this machine")
        if kind == "environment" and not cls.detect():
            raise Skipped(f"{other} does not detect a job here")
    except Skipped:
        raise
    except Exception as err:  # noqa: BLE001 - another package's probe; not this backend's defect
        raise Skipped(f"{other} is broken: its availability probe raised {type(err).__name__}: {err}") from None
    kwargs = dict(home)
    if kind == "environment":
        kwargs["plugins"] = [*kwargs.get("plugins", []), name]
    else:
        kwargs[kind] = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(**ctx.base_kwargs("combination"), **kwargs)
    except MisconfigurationError as err:
        raise Skipped(f"refused when the Trainer is created (MisconfigurationError): {err}") from None
    except PluginError as err:
        if ctx.backend.distribution in str(err):
            raise Failed(f"{ctx.label} with {other}: {err}") from None
        raise Skipped(f"{other} breaks the hook contract: {err}") from None
    tag = f"combination-{kind}-{name}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = ctx.fit(tag, kwargs)
    except Exception as err:  # noqa: BLE001
        if not MAIN:
            raise
        raise Failed(
            f"{ctx.label} with {other} ({_describe(kwargs)}) was accepted when the Trainer was created, then fit() "
            f"failed. Refuse combinations that cannot run in torchplug_configure (MisconfigurationError, naming "
            f"what would work), or make them work:\n{_trace(err)}"
        ) from None
    if trainer.global_step != SHORT:
        raise Failed(f"with {other}, fit() stopped at step {trainer.global_step} of {SHORT}")


TWO_PROCESSES = "two_process_configuration"

CHECKS: dict[str, Callable[..., Any]] = {
    "selected_by_name": check_selected_by_name,
    "selected_by_instance": check_selected_by_instance,
    "picklable": check_picklable,
    "options_reach_the_backend": check_options_reach_the_backend,
    "misspelled_options_are_refused": check_misspelled_options_are_refused,
    "trains": check_trains,
    "checkpoint_round_trip": check_checkpoint_round_trip,
    "resumes_mid_epoch_bitwise": check_resumes_bitwise,
    "two_fits_in_one_process": check_two_fits_in_one_process,
    "teardown_after_failed_setup": check_teardown_after_failed_setup,
    "auto_accelerator": check_auto_accelerator,
    "detected": check_detected,
    "cluster_info": check_cluster_info,
    "trains_in_processes": check_trains_in_processes,
    "per_rank_state_survives_checkpoints": check_per_rank_state,
    "resumes_bitwise_in_processes": check_resumes_bitwise_in_processes,
    "rank_that_raises_is_reported_once": check_rank_that_raises,
    "rank_that_dies_ends_the_job": check_rank_that_dies,
}


def check_two_process_configuration(ctx: Context) -> None:
    """Not a test: whether the two-process checks can run here (they then skip with this reason, unstarted)."""
    ctx.multi  # noqa: B018


CHECKS[TWO_PROCESSES] = check_two_process_configuration


def run(ctx: Context, check: str) -> Any:
    """Run one check by id (``"combination:<kind>:<name>"`` for the matrix)."""
    if check.startswith("combination:"):
        _, kind, name = check.split(":", 2)
        return check_combination(ctx, kind, name)
    return CHECKS[check](ctx)
