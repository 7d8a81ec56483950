"""``torchplug plugins [--check]``, ``torchplug env``, ``torchplug plot`` and ``torchplug new-backend``: what is
installed, what it did, and a new backend package to start from.

This module also holds :class:`LightningCLI` and its parts (Lightning's ``lightning.pytorch.cli``), imported on first
use from :mod:`torchplug._lightning_cli` so that the ``torchplug`` command does not need jsonargparse.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any

from torchplug import registry
from torchplug._errors import PluginLoadError
from torchplug._plugins import check_plugin

_GROUP_TITLES = {
    "accelerator": "accelerators",
    "strategy": "strategies",
    "precision": "precisions",
    "environment": "cluster environments",
}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _check(backend: registry.Backend) -> tuple[str, str, list[str]]:
    """(imports, available, problems) for one backend: imported, checked against the hook specs, probed.

    ``problems`` lists what makes the backend unusable or broken (an import error, a hook-contract mistake, a
    probe that raises); an unavailable backend (no GPU here) is not a problem.
    """
    try:
        cls = backend.load()
    except PluginLoadError as err:
        cause = err.__cause__
        text = f"{type(cause).__name__}: {cause}" if cause else str(err)
        return f"no: {text}", "-", [f"does not import: {text}"]
    problems = [f"hook contract: {problem}" for problem in check_plugin(cls)] if isinstance(cls, type) else []
    imports = "yes" if not problems else "yes, but breaks the hook contract"
    if backend.kind == "environment":
        try:
            return imports, "detected" if cls.detect() else "not detected", problems
        except Exception as err:  # a detection probe must not take the listing down
            return imports, f"error: {err}", [*problems, f"detect() raised {type(err).__name__}: {err}"]
    available = "-"
    is_available = getattr(cls, "is_available", None)
    if is_available is not None:
        try:
            available = "yes" if is_available() else "no"
        except Exception as err:  # an availability probe must not take the listing down
            available = f"error: {err}"
            problems.append(f"is_available() raised {type(err).__name__}: {err}")
    if available == "yes" and backend.kind == "accelerator":
        try:
            count = cls.device_count()
        except Exception as err:
            problems.append(f"device_count() raised {type(err).__name__}: {err}")
            count = f"error: {err}"
        if count is not None:
            available += f" ({count} devices)"
        if not isinstance(getattr(cls, "device_type", None), str):
            problems.append("declares no device_type (the torch device type it computes on)")
    return imports, available, problems


def cmd_plugins(args: argparse.Namespace) -> int:
    failures: list[str] = []
    for kind, title in _GROUP_TITLES.items():
        backends = registry.discover(kind)
        print(f"{title} (entry-point group {registry.GROUPS[kind]})")
        if not backends:
            print("  (none installed)\n")
            continue
        header = ["name", "aliases", "distribution", "version"]
        rows = []
        names: dict[str, list[str]] = {}
        for b in backends:
            for n in b.names:
                names.setdefault(n, []).append(b.distribution)
        for b in backends:
            row = [b.name, ", ".join(b.aliases) or "-", b.distribution, b.version]
            if args.check:
                imports, available, problems = _check(b)
                row += [imports, available]
                failures += [f"{kind} {b.name!r} ({b.distribution} {b.version}): {p}" for p in problems]
            clashes = sorted({d for n in b.names for d in names[n] if d != b.distribution})
            if clashes:
                row[0] += f" (also claimed by {', '.join(clashes)})"
                if args.check:
                    failures.append(
                        f"{kind} name {b.name!r} is claimed by {b.distribution} and {', '.join(clashes)}"
                    )
            rows.append(row)
        if args.check:
            header += ["imports", "available"]
        print("\n".join("  " + line for line in _table(rows, header).splitlines()))
        print()
    if failures:
        print(f"{len(failures)} problem(s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"platform     {platform.platform()}")
    print(f"torch        {torch.__version__}")
    from torchplug import __version__

    print(f"torchplug    {__version__}")
    print(f"float32 matmul precision: {torch.get_float32_matmul_precision()}")
    print(f"cpu threads  {torch.get_num_threads()} (os.cpu_count={os.cpu_count()})")
    print("\naccelerators")
    for backend in registry.discover("accelerator"):
        imports, available, _ = _check(backend)
        status = available if imports == "yes" else imports
        print(f"  {backend.name:<10} {status}   [{backend.distribution} {backend.version}]")
    print("\nplugins")
    for kind, title in _GROUP_TITLES.items():
        names = ", ".join(b.name for b in registry.discover(kind)) or "none"
        print(f"  {title:<22} {names}")
    print("\ncluster environment")
    detected = None
    for backend in registry.discover("environment"):
        try:
            cls = backend.load()
        except PluginLoadError:
            continue
        if cls.detect() and (detected is None or cls.detect_order < detected[0]):
            detected = (cls.detect_order, backend.name)
    print(f"  {detected[1] if detected else 'none detected (a single local process)'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from torchplug._errors import MisconfigurationError
    from torchplug._plot import plot_metrics

    try:
        out = plot_metrics(args.metrics_csv, args.output)
    except (MisconfigurationError, ModuleNotFoundError, FileNotFoundError) as err:
        print(f"torchplug plot: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def cmd_new_backend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchplug import _scaffold

    try:
        root = _scaffold.create(args.kind, args.name, Path(args.directory))
    except (ValueError, FileExistsError) as err:
        print(f"torchplug new-backend: {err}", file=sys.stderr)
        return 1
    print(f"created {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(root)}")
    print(f"\nnext: cd {root} && pip install -e '.[test]' && pytest   (the conformance kit passes as made)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchplug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list installed backends per entry-point group")
    p.add_argument(
        "--check",
        action="store_true",
        help="also import each backend, check it against the hook specs and probe its availability; exit 1 on any problem",
    )
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("env", help="torch version, accelerators and devices, plugins, cluster environment")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("plot", help="write a PNG of the curves in a metrics.csv (needs torchplug[plot])")
    p.add_argument("metrics_csv")
    p.add_argument("-o", "--output", default=None, help="PNG path (default: next to the CSV)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser(
        "new-backend",
        help="create a backend package (pyproject with its entry point, README, src/, tests running the conformance kit)",
    )
    p.add_argument("kind", choices=list(registry.GROUPS), help="what the backend is")
    p.add_argument(
        "name", help="the name users will type (Trainer(strategy='NAME')); the package is torchplug-NAME"
    )
    p.add_argument("--directory", default=".", help="where to create torchplug-NAME/ (default: here)")
    p.set_defaults(func=cmd_new_backend)
    args: Any = parser.parse_args(argv)
    return int(args.func(args))


_LIGHTNING_CLI_NAMES = (
    "ArgsType",
    "LRSchedulerCallable",
    "LRSchedulerType",
    "LRSchedulerTypeTuple",
    "LRSchedulerTypeUnion",
    "LightningArgumentParser",
    "LightningCLI",
    "OptimizerCallable",
    "ReduceLROnPlateau",
    "SaveConfigCallback",
    "instantiate_class",
    "instantiate_module",
)


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_CLI_NAMES:  # raises ModuleNotFoundError naming torchplug[cli] without jsonargparse
        import importlib

        return getattr(importlib.import_module("torchplug._lightning_cli"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", *_LIGHTNING_CLI_NAMES]


if __name__ == "__main__":
    sys.exit(main())
