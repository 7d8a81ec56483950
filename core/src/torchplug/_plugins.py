"""The plugin manager of a run, and the checks every plugin passes before it is registered.

A plugin's mistakes are found when it is registered (and by ``torchplug plugins --check``), not when a hook it
meant to implement silently never runs: a ``torchplug_*`` method that matches no hook, one that is not decorated
with ``@hookimpl``, a parameter the hook does not have, a generator that is not marked ``wrapper=True``. Each
error names the plugin, its distribution and the fix.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import inspect
import os
import sys
from typing import Any

import pluggy

from torchplug import hookspecs
from torchplug._defaults import Defaults
from torchplug._errors import PluginError

_PREFIX = "torchplug_"
_MARKER = "torchplug_impl"  # the attribute pluggy's HookimplMarker("torchplug") sets on a decorated function


def tracing() -> bool:
    """Whether ``TORCHPLUG_TRACE_HOOKS`` asks for every hook call (and step operation) to be printed."""
    return os.environ.get("TORCHPLUG_TRACE_HOOKS", "") not in ("", "0")


def trace(message: str) -> None:
    print(f"[torchplug hook] {message}", file=sys.stderr, flush=True)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("torchplug")
    pm.add_hookspecs(hookspecs)
    pm.register(Defaults(), name="torchplug._defaults")
    if tracing():
        pm.add_hookcall_monitoring(_before, _after)
    return pm


def _before(hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    trace(f"{hook_name} -> {', '.join(_plugin_label(impl.plugin_name, impl.plugin) for impl in impls)}")


def _after(outcome: Any, hook_name: str, impls: list[Any], kwargs: dict[str, Any]) -> None:
    pass


def _plugin_label(name: str, plugin: Any) -> str:
    return name or type(plugin).__name__


def register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Check ``plugin`` against the hook specifications, then register it; raise :class:`PluginError` if it fails."""
    problems = check_plugin(plugin)
    if problems:
        raise PluginError(_report(plugin, name, problems))
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as err:  # what our own checks do not foresee, still named
        raise PluginError(_report(plugin, name, [str(err)])) from err


def _report(plugin: Any, name: str, problems: list[str]) -> str:
    cls = type(plugin) if not isinstance(plugin, type) else plugin
    where = f"{cls.__module__}.{cls.__qualname__}"
    lines = [f"the {name} plugin {where} ({distribution_of(cls)}) breaks torchplug's hook contract:"]
    lines += [f"  - {problem}" for problem in problems]
    lines.append("Hook names, parameters and markers are documented in torchplug.hookspecs (docs/hooks.md).")
    return "\n".join(lines)


def check_plugin(plugin: Any) -> list[str]:
    """Every mistake in ``plugin``'s hook implementations (an instance or a class); empty when it is sound."""
    specs = _specs()
    problems: list[str] = []
    cls = plugin if isinstance(plugin, type) else type(plugin)
    for attr in sorted(dir(cls)):
        if not attr.startswith(_PREFIX):
            continue
        function = inspect.getattr_static(cls, attr, None)
        if isinstance(function, (staticmethod, classmethod)):
            function = function.__func__
        if not callable(function):
            continue
        options = getattr(function, _MARKER, None)
        spec = specs.get(attr)
        if spec is None:
            close = difflib.get_close_matches(attr, specs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{attr!r} is not a torchplug hook, so it would never be called{hint}")
            continue
        if options is None:
            problems.append(
                f"{attr!r} is not decorated with @hookimpl (from torchplug import hookimpl), so it would never be "
                "called"
            )
            continue
        problems += _check_signature(attr, function, spec)
        is_wrapper = options.get("wrapper") or options.get("hookwrapper")
        if inspect.isgeneratorfunction(function) and not is_wrapper:
            problems.append(
                f"{attr!r} is a generator (it yields), but it is not marked @hookimpl(wrapper=True): it would "
                "return a generator object as its answer instead of wrapping the hook"
            )
        elif is_wrapper and not inspect.isgeneratorfunction(function):
            problems.append(f"{attr!r} is marked wrapper=True but does not yield to the implementations it wraps")
    return problems


def _check_signature(attr: str, function: Any, spec: list[str]) -> list[str]:
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return []
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [n for n in names if n not in spec]
    if not unknown:
        return []
    advice = []
    for name in unknown:
        close = difflib.get_close_matches(name, spec, n=1)
        advice.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return [
        f"{attr!r} takes {', '.join(advice)}, which the hook does not pass; it passes {', '.join(spec)} "
        "(take any subset of them, by name)"
    ]


@functools.cache
def _specs() -> dict[str, list[str]]:
    found = {}
    for name, function in vars(hookspecs).items():
        if name.startswith(_PREFIX) and callable(function):
            found[name] = list(inspect.signature(function).parameters)
    return found


def distribution_of(cls: type) -> str:
    """``"distribution version"`` of the installed package that holds ``cls``, or where it was defined."""
    top = cls.__module__.split(".")[0]
    names = _packages_distributions().get(top)
    if names:
        try:
            return f"distribution {names[0]} {md.version(names[0])}"
        except md.PackageNotFoundError:
            return f"distribution {names[0]}"
    return f"defined in module {cls.__module__!r}, not in an installed distribution"


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()
