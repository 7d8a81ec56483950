"""Backend selection: Trainer arguments in, registered plugins and a frozen :class:`RunSpec` out.

What is imported when: a backend given by name is imported when it is selected, and nothing else of its kind is.
``accelerator="auto"`` imports the module of every installed accelerator entry point, to read its ``priority``
and call ``is_available()`` (so those modules must import nothing heavy at import time); strategies, precisions
and cluster environments are imported only when selected, and environments only for a strategy that reads one
(``Strategy.needs_cluster_environment``), tried in ``detect_order`` until one detects.
A backend that fails to import, or whose ``is_available()``/``device_count()``/``detect()`` raises, is skipped
with a warning naming it and its distribution when it was only a candidate, and is an error when it was named.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from torchplug import _plugins, registry
from torchplug._errors import ArgumentTypeError, MisconfigurationError, PluginError, PluginLoadError
from torchplug._types import RunSpec
from torchplug.accelerators import Accelerator
from torchplug.environments import ClusterEnvironment
from torchplug.precision import Precision
from torchplug.strategies import Strategy

log = logging.getLogger("torchplug")

_BASES: dict[str, type] = {
    "accelerator": Accelerator,
    "strategy": Strategy,
    "precision": Precision,
    "environment": ClusterEnvironment,
}


@dataclass
class Selection:
    """The outcome of selection: the plugin manager with every plugin registered, the plugins, the run spec."""

    plugin_manager: pluggy.PluginManager
    run: RunSpec
    accelerator: Any
    strategy: Any
    precision: Any
    environment: Any
    extras: list[Any]


def select(
    *,
    accelerator: Any,
    strategy: Any,
    devices: Any,
    num_nodes: int,
    precision: Any,
    plugins: Any,
    options: dict[str, Any],
) -> Selection:
    """Resolve every backend, register it, and check that the combination runs (``torchplug_configure``)."""
    pm = _plugins.new_plugin_manager()
    hook = pm.hook
    used: set[str] = set()
    environment, extras = _split_plugins(plugins, options, used)
    for extra in extras:
        if isinstance(extra, Precision):
            if not _is_default_precision(precision):
                raise MisconfigurationError(
                    f"precision={precision!r} and plugins=[{type(extra).__name__}(...)] both set the precision"
                )
            precision = extra
    extras = [e for e in extras if not isinstance(e, Precision)]

    # accelerator, then its devices
    if accelerator == "auto":
        accelerator_name, accelerator_cls = _auto_accelerator()
        accelerator = instantiate("accelerator", accelerator_cls, accelerator_name, options, used)
    else:
        accelerator_name, accelerator = resolve("accelerator", accelerator, options, used)
    device_type = _device_type(accelerator, accelerator_name)
    _plugins.register(pm, accelerator, f"accelerator:{accelerator_name}")
    count = _device_count(accelerator, accelerator_name)
    device_ids = hook.torchplug_select_devices(devices=devices, device_count=count, device_type=device_type)

    # strategy
    if strategy == "auto":
        strategy = hook.torchplug_default_strategy(device_ids=list(device_ids), num_nodes=num_nodes)
        if strategy is None:
            raise PluginError(
                f"accelerator {accelerator_name!r} ({_plugins.distribution_of(type(accelerator))}) answered no "
                "default strategy for strategy='auto'; pass strategy=... explicitly"
            )
    strategy_name, strategy = resolve("strategy", strategy, options, used)
    _plugins.register(pm, strategy, f"strategy:{strategy_name}")

    # precision: the accelerator may substitute one it can run (TPUs: bf16 for fp16)
    if isinstance(precision, (str, int, float)) and not isinstance(precision, bool):
        name = registry.normalize_name(precision, "precision")
        precision = hook.torchplug_precision_name(precision=name) or name
    precision_name, precision = resolve("precision", precision, options, used)

    # processes and, where a job needs one, the cluster environment that started (or will start) them
    num_processes = hook.torchplug_num_processes(device_ids=list(device_ids), num_nodes=num_nodes)
    if environment is None and getattr(strategy, "needs_cluster_environment", False):
        environment = _detect_environment(options, used)
    environment_name, environment = environment if environment is not None else (None, None)
    if environment is not None:
        _plugins.register(pm, environment, f"environment:{environment_name}")
    _plugins.register(pm, precision, f"precision:{precision_name}")
    for i, extra in enumerate(extras):
        _plugins.register(pm, extra, f"plugin:{i}:{type(extra).__name__}")

    unknown = sorted(set(options) - used)
    if unknown:
        raise ArgumentTypeError(  # a TypeError too, as Python's own for an unknown keyword
            f"Trainer.__init__() got an unexpected keyword argument {unknown[0]!r}"
            f"{' (and ' + ', '.join(map(repr, unknown[1:])) + ')' if len(unknown) > 1 else ''}: no selected backend takes it "
            f"(accelerator {accelerator_name!r}, strategy {strategy_name!r}, precision {precision_name!r}). Check "
            "the spelling, or select the backend that has this option."
        )
    run = RunSpec(
        accelerator=accelerator_name,
        strategy=strategy_name,
        precision=precision_name,
        environment=environment_name,
        device_type=device_type,
        device_ids=tuple(device_ids),
        num_nodes=num_nodes,
        num_processes=num_processes,
        devices_arg=devices,
    )
    return Selection(pm, run, accelerator, strategy, precision, environment, extras)


def _is_default_precision(precision: Any) -> bool:
    return isinstance(precision, (str, int)) and str(precision) in ("32-true", "32")


def _split_plugins(plugins: Any, options: dict[str, Any], used: set[str]) -> tuple[Any, list[Any]]:
    """``Trainer(plugins=...)``: at most one cluster environment (by name or instance), and other plugins."""
    given = plugins if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
    environment, extras = None, []
    for plugin in given:
        if isinstance(plugin, str) or isinstance(plugin, ClusterEnvironment):
            if environment is not None:
                raise MisconfigurationError(f"plugins={plugins!r} names two cluster environments; pass one")
            environment = resolve("environment", plugin, options, used)
        elif isinstance(plugin, (Accelerator, Strategy)):
            kind = "accelerator" if isinstance(plugin, Accelerator) else "strategy"
            raise MisconfigurationError(f"plugins=[{type(plugin).__name__}(...)]: pass it as {kind}=..., not in plugins")
        elif plugin is None or isinstance(plugin, (bool, int, float, bytes, list, tuple, dict, type)):
            raise MisconfigurationError(
                f"plugins={plugins!r}: {plugin!r} is not a plugin; give cluster environment names "
                f"({', '.join(registry.installed_names('environment')) or 'none installed'}), "
                "ClusterEnvironment or Precision instances, or objects with @hookimpl methods"
            )
        else:
            extras.append(plugin)
    return environment, extras


def instantiate(kind: str, cls: Any, name: str, options: dict[str, Any], used: set[str]) -> Any:
    """Create a backend from its class, filling constructor keywords from ``Trainer(**options)``."""
    if not callable(cls):
        raise PluginError(f"the {kind} {name!r} entry point does not name a class or factory: {cls!r}")
    accepted = option_names(cls)
    kwargs = {k: v for k, v in options.items() if k in accepted}
    used.update(kwargs)
    if kind == "precision" and "precision" in accepted:
        # Lightning's MixedPrecision(precision, ...) and HalfPrecision(precision): one class, several names
        kwargs["precision"] = name
    try:
        return cls(**kwargs)
    except MisconfigurationError:
        raise
    except TypeError as err:
        raise MisconfigurationError(f"could not create the {kind} {name!r} with {kwargs}: {err}") from err


def option_names(cls: Any) -> set[str]:
    """The Trainer keywords a backend takes: its ``__init__``'s named parameters, and where that forwards
    ``**kwargs`` to its base class (a subclass of ``DDPStrategy`` adding one option), the base's too."""
    names: set[str] = set()
    for klass in inspect.getmro(cls) if isinstance(cls, type) else [cls]:
        init = klass.__dict__.get("__init__") if isinstance(cls, type) else klass
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    names.discard("self")
    return names


def resolve(kind: str, value: Any, options: dict[str, Any], used: set[str]) -> tuple[str, Any]:
    """``(canonical name, instance)`` for a name or an instance given by the user."""
    argument = "plugins" if kind == "environment" else kind
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        backend = registry.find(kind, value)
        cls = backend.load()
        return backend.name, instantiate(kind, cls, backend.name, options, used)
    base = _BASES[kind]
    if isinstance(value, type):
        raise MisconfigurationError(f"{argument}={value.__name__}: pass an instance ({value.__name__}()) or a name")
    if not isinstance(value, base):
        installed = ", ".join(registry.installed_names(kind)) or "none"
        raise MisconfigurationError(
            f"{argument}={value!r}: expected the name of an installed {kind} ({installed}) or an instance of a "
            f"torchplug.{base.__module__.split('.')[-1]}.{base.__name__} subclass"
        )
    return getattr(value, "name", None) or _name_of(kind, value), value


def _name_of(kind: str, instance: Any) -> str:
    """The registered name of an instance's class (among backends already imported), or its class name."""
    cls = type(instance)
    for backend in registry.discover(kind):
        module = backend.value.partition(":")[0].strip()
        if module in sys.modules and _loads(backend) is cls:
            return backend.name
    return cls.__name__


def _loads(backend: registry.Backend) -> Any:
    try:
        return backend.load()
    except PluginLoadError:
        return None


def _device_type(accelerator: Any, name: str) -> str:
    device_type = getattr(accelerator, "device_type", None)
    if not isinstance(device_type, str) or not device_type:
        raise PluginError(
            f"the accelerator {name!r} ({type(accelerator).__module__}.{type(accelerator).__qualname__}, "
            f"{_plugins.distribution_of(type(accelerator))}) declares no device_type: set the class attribute "
            "device_type to the torch device type it computes on (\"cuda\", \"cpu\", \"xla\", ...)"
        )
    return device_type


def _device_count(accelerator: Any, name: str) -> int | None:
    try:
        return accelerator.device_count()
    except MisconfigurationError:
        raise
    except Exception as err:
        raise PluginError(
            f"the accelerator {name!r} ({_plugins.distribution_of(type(accelerator))}) failed to count its "
            f"devices: {type(err).__name__}: {err}"
        ) from err


def _auto_accelerator() -> tuple[str, type]:
    """The available installed accelerator with the highest priority; broken ones are skipped with a warning."""
    best: tuple[int, str, type] | None = None
    for backend in registry.discover("accelerator"):
        try:
            cls = backend.load()
            available = bool(cls.is_available())
        except PluginLoadError as err:
            _skip("accelerator", backend, "accelerator='auto'", err)
            continue
        except Exception as err:  # a broken availability probe must not take every Trainer() down
            _skip("accelerator", backend, "accelerator='auto'", f"is_available() raised {type(err).__name__}: {err}")
            continue
        priority = getattr(cls, "priority", 0)
        if available and (best is None or priority > best[0]):
            best = (priority, backend.name, cls)
    if best is None:
        raise MisconfigurationError("accelerator='auto': no installed accelerator is available on this machine")
    return best[1], best[2]


def _detect_environment(options: dict[str, Any], used: set[str]) -> tuple[str, Any] | None:
    """The first installed cluster environment, by ``detect_order``, whose ``detect()`` is true."""
    candidates = []
    for backend in registry.discover("environment"):
        try:
            cls = backend.load()
        except PluginLoadError as err:
            _skip("cluster environment", backend, "detection", err)
            continue
        candidates.append((getattr(cls, "detect_order", 100), backend, cls))
    for _, backend, cls in sorted(candidates, key=lambda c: (c[0], c[1].name)):
        try:
            detected = cls.detect()
        except Exception as err:
            _skip("cluster environment", backend, "detection", f"detect() raised {type(err).__name__}: {err}")
            continue
        if detected:
            return backend.name, instantiate("environment", cls, backend.name, options, used)
    return None


def _skip(kind: str, backend: registry.Backend, purpose: str, why: Any) -> None:
    warnings.warn(
        f"skipping the {kind} {backend.name!r} (distribution {backend.distribution} {backend.version}) for "
        f"{purpose}: {why}",
        RuntimeWarning,
        stacklevel=4,
    )
