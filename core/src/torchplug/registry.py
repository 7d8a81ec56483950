"""Which backends are installed, read from entry-point metadata only; a backend is imported when it is chosen.

Four groups, one per axis; the entry-point name is the name users type, and several names pointing at one object
of one distribution are aliases (the longest is the primary name, ties broken alphabetically)::

    [project.entry-points."torchplug.strategies"]
    ddp = "torchplug_ddp.strategies.ddp:DDPStrategy"
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from dataclasses import dataclass
from functools import cache
from typing import Any

from torchplug._errors import MisconfigurationError, PluginLoadError

GROUPS: dict[str, str] = {
    "accelerator": "torchplug.accelerators",
    "strategy": "torchplug.strategies",
    "precision": "torchplug.precisions",
    "environment": "torchplug.environments",
}

# Names of this project's own backend packages, so an uninstalled one gets a `pip install` hint.
_PROJECT_PACKAGES: dict[str, dict[str, str]] = {
    "accelerator": {"cuda": "torchplug-cuda", "gpu": "torchplug-cuda", "tpu": "torchplug-xla", "xla": "torchplug-xla"},
    "strategy": {
        "dp": "torchplug-dp",
        "ddp": "torchplug-ddp",
        "ddp_spawn": "torchplug-ddp",
        "ddp_cpu": "torchplug-ddp",
        "ddp2": "torchplug-ddp",
        "fsdp": "torchplug-fsdp",
        "xla": "torchplug-xla",
        "single_xla": "torchplug-xla",
        "xla_spmd": "torchplug-xla",
    },
    "precision": {
        "16-mixed": "torchplug-amp",
        "16": "torchplug-amp",
        "mixed": "torchplug-amp",
        "bf16-mixed": "torchplug-amp",
        "bf16": "torchplug-amp",
        "apex": "torchplug-apex",
    },
    "environment": {},
}


@dataclass(frozen=True)
class Backend:
    """One installed backend as its metadata describes it; nothing is imported until :meth:`load`."""

    kind: str
    name: str
    aliases: tuple[str, ...]
    value: str
    distribution: str
    version: str

    def load(self) -> Any:
        """Import and return the object the entry point names, or raise :class:`PluginLoadError`."""
        return _load(self)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@cache
def _load(backend: Backend) -> Any:
    module_name, _, attr = backend.value.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
    except Exception as err:
        raise PluginLoadError(
            f"the {backend.kind} {backend.name!r} from distribution {backend.distribution!r} {backend.version} "
            f"failed to import ({backend.value}): {type(err).__name__}: {err}"
        ) from err
    return obj


def normalize_name(name: Any, kind: str = "backend") -> str:
    """The name to look up for a value the user gave: ``16``, ``16.0`` and ``"16"`` are the same precision.

    A float is accepted only where it equals a whole number (YAML turns ``16`` into ``16.0``); anything that is not
    a string or a number is refused, naming the argument, so it never reaches a backend as a silent default.
    """
    argument = "plugins" if kind == "environment" else kind
    if isinstance(name, float) and not isinstance(name, bool) and name.is_integer():
        name = int(name)
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        installed = ", ".join(installed_names(kind)) if kind in GROUPS else ""
        raise MisconfigurationError(
            f"{argument}={name!r}: expected a name" + (f" ({installed})" if installed else "") + " or an instance"
        )
    return str(name).strip()


@cache
def discover(kind: str) -> tuple[Backend, ...]:
    """Every installed backend of one kind (``accelerator``, ``strategy``, ``precision``, ``environment``)."""
    group = GROUPS[kind]
    by_object: dict[tuple[str, str], list[Any]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in _torchplug_entry_points().get(group, ()):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
        if (dist_name, ep.name) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((dist_name, ep.name))
        by_object.setdefault((dist_name, ep.value), []).append(ep)
    backends = []
    for (dist_name, value), eps in by_object.items():
        # Metadata does not keep the order names were declared in, so the primary name is the longest one
        # ("32-true" over "32", "16-mixed" over "16" and "mixed"), ties broken alphabetically ("tpu" over "xla").
        names = sorted((ep.name for ep in eps), key=lambda n: (-len(n), n))
        dist = eps[0].dist
        backends.append(
            Backend(
                kind=kind,
                name=names[0],
                aliases=tuple(names[1:]),
                value=value,
                distribution=dist_name,
                version=dist.version if dist is not None else "?",
            )
        )
    return tuple(sorted(backends, key=lambda b: b.name))


@cache
def _torchplug_entry_points() -> dict[str, list[Any]]:
    """Every entry point of the four groups, from one pass over the installed metadata."""
    everything = md.entry_points()  # one scan; selecting from it reads nothing more
    return {group: list(everything.select(group=group)) for group in GROUPS.values()}


def clear_cache() -> None:
    """Forget what was discovered (after installing or removing a backend in this process)."""
    _torchplug_entry_points.cache_clear()
    discover.cache_clear()
    _load.cache_clear()
    importlib.invalidate_caches()
    from torchplug import _plugins

    _plugins._packages_distributions.cache_clear()


def installed_names(kind: str) -> list[str]:
    return sorted(n for b in discover(kind) for n in b.names)


def find(kind: str, name: Any) -> Backend:
    """The backend registered under ``name`` (or an alias), with a helpful error when there is none or two."""
    wanted = normalize_name(name, kind)
    matches = [b for b in discover(kind) if wanted in b.names]
    if len(matches) == 1:
        return matches[0]
    argument = "plugins" if kind == "environment" else kind
    if not matches:
        msg = f"no {kind} named {wanted!r}; installed: {', '.join(installed_names(kind)) or 'none'}"
        package = _PROJECT_PACKAGES[kind].get(wanted)
        if package:
            msg += f". {wanted!r} is provided by the {package} package: pip install {package}"
        raise MisconfigurationError(f"{argument}={name!r}: {msg}")
    claims = "; ".join(f"{b.distribution} {b.version} ({b.value})" for b in matches)
    raise MisconfigurationError(
        f"{argument}={name!r}: the {kind} name {wanted!r} is claimed by {len(matches)} installed distributions: "
        f"{claims}. Uninstall one of them, or pass an instance instead of the name."
    )


def load(kind: str, name: Any) -> Any:
    """Import the backend ``name`` and return its class (or factory)."""
    return find(kind, name).load()


__all__ = ["GROUPS", "Backend", "clear_cache", "discover", "find", "installed_names", "load", "normalize_name"]
