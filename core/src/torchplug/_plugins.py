"""Turning ``Trainer`` arguments into registered plugins: names or instances in, one plugin manager out."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from typing import Any

import pluggy

from torchplug import hookspecs, registry
from torchplug._defaults import Defaults
from torchplug._errors import MisconfigurationError, PluginLoadError
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


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("torchplug")
    pm.add_hookspecs(hookspecs)
    pm.register(Defaults(), name="torchplug._defaults")
    if os.environ.get("TORCHPLUG_TRACE_HOOKS", "") not in ("", "0"):
        _trace(pm)
    return pm


def _trace(pm: pluggy.PluginManager) -> None:
    def before(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        who = ", ".join(pm.get_name(impl.plugin) or type(impl.plugin).__name__ for impl in impls)
        print(f"[torchplug hook] {hook_name} -> {who}", file=sys.stderr, flush=True)

    def after(outcome: Any, hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
        pass

    pm.add_hookcall_monitoring(before, after)


def instantiate(kind: str, cls: Any, name: str, options: dict[str, Any], used: set[str]) -> Any:
    """Create a backend from its class, filling constructor keywords from ``Trainer(**options)``."""
    if not callable(cls):
        raise MisconfigurationError(f"the {kind} {name!r} entry point does not name a class or factory: {cls!r}")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in options.items() if k in params or accepts_any}
    used.update(kwargs)
    try:
        return cls(**kwargs)
    except MisconfigurationError:
        raise
    except TypeError as err:
        raise MisconfigurationError(f"could not create the {kind} {name!r} with {kwargs}: {err}") from err


def resolve(kind: str, value: Any, options: dict[str, Any], used: set[str]) -> tuple[str, Any]:
    """``(canonical name, instance)`` for a name or an instance given by the user."""
    if isinstance(value, str) or isinstance(value, int):
        backend = registry.find(kind, value)
        cls = backend.load()
        return backend.name, instantiate(kind, cls, backend.name, options, used)
    base = _BASES[kind]
    if isinstance(value, type):
        raise MisconfigurationError(f"{kind}={value.__name__}: pass an instance ({value.__name__}()) or a name")
    if not isinstance(value, base):
        warnings.warn(
            f"{kind}={value!r} does not subclass torchplug's {base.__name__}; using it as a plugin anyway",
            stacklevel=4,
        )
    return getattr(value, "name", None) or _name_of(kind, value), value


def _name_of(kind: str, instance: Any) -> str:
    """The registered name of an instance's class, or its class name."""
    cls = type(instance)
    target = f"{cls.__module__}:{cls.__qualname__}"
    for backend in registry.discover(kind):
        if backend.value.replace(" ", "") == target:
            return backend.name
    return cls.__name__


def auto_accelerator() -> tuple[str, type]:
    """The available installed accelerator with the highest priority."""
    best: tuple[int, str, type] | None = None
    for backend in registry.discover("accelerator"):
        try:
            cls = backend.load()
            available = cls.is_available()
        except PluginLoadError as err:
            log.warning("skipping accelerator %r for accelerator='auto': %s", backend.name, err)
            continue
        if available and (best is None or getattr(cls, "priority", 0) > best[0]):
            best = (getattr(cls, "priority", 0), backend.name, cls)
    if best is None:
        raise MisconfigurationError("accelerator='auto': no installed accelerator is available on this machine")
    return best[1], best[2]


def detect_environment(options: dict[str, Any], used: set[str]) -> tuple[str, Any] | None:
    """The first installed cluster environment, by ``detect_order``, whose ``detect()`` is true."""
    candidates = []
    for backend in registry.discover("environment"):
        try:
            cls = backend.load()
        except PluginLoadError as err:
            log.warning("skipping cluster environment %r: %s", backend.name, err)
            continue
        candidates.append((getattr(cls, "detect_order", 100), backend.name, cls))
    for _, name, cls in sorted(candidates, key=lambda c: (c[0], c[1])):
        if cls.detect():
            return name, instantiate("environment", cls, name, options, used)
    return None
