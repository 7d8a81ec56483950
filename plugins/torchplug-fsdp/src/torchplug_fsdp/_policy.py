"""Which submodules become their own shard units, and which recompute their activations in backward.

A policy is a set (or list, tuple) of ``nn.Module`` classes, one class, or a callable ``policy(module) -> bool``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from torchplug import MisconfigurationError

Policy = Callable[[nn.Module], bool]


class ClassPolicy:
    """Selects the modules that are instances of ``classes``."""

    def __init__(self, classes: Iterable[type[nn.Module]]) -> None:
        self.classes = tuple(classes)

    def __call__(self, module: nn.Module) -> bool:
        return isinstance(module, self.classes)

    def __repr__(self) -> str:
        return "{" + ", ".join(c.__name__ for c in self.classes) + "}"


def as_policy(value: Any, option: str) -> Policy | None:
    """``None``, a class, a collection of classes, or a callable; anything else is refused naming ``option``."""
    if value is None:
        return None
    if isinstance(value, type):
        value = {value}
    if isinstance(value, (set, frozenset, list, tuple)):
        if not value:
            return None
        wrong = [v for v in value if not (isinstance(v, type) and issubclass(v, nn.Module))]
        if wrong:
            raise MisconfigurationError(
                f"{option}={value!r}: {wrong[0]!r} is not an nn.Module class; give module classes "
                f"({option}={{nn.TransformerEncoderLayer}}) or a callable module -> bool"
            )
        return ClassPolicy(value)
    if callable(value):
        return value
    raise MisconfigurationError(
        f"{option}={value!r}: expected a set of nn.Module classes (e.g. {{nn.TransformerEncoderLayer}}) or a "
        "callable that takes a module and returns whether to select it"
    )


def select_units(root: nn.Module, policy: Policy | None, option: str) -> list[nn.Module]:
    """The modules under ``root`` (itself included) that ``policy`` makes shard units, children before parents.

    ``fully_shard`` must be applied bottom-up; each unit manages the parameters of its subtree that no unit below
    it manages. A class policy that selects nothing, or a module that would manage no parameter, is an error
    (a unit shards parameters: such a unit is always a mistake in the policy). A callable policy may select
    modules without parameters; they are skipped.
    """
    if policy is None:
        return []
    from torch.distributed.fsdp import FSDPModule

    chosen = [(name, m) for name, m in root.named_modules() if policy(m) and not isinstance(m, FSDPModule)]
    if not chosen and isinstance(policy, ClassPolicy):
        found = sorted({type(m).__name__ for m in root.modules()})
        raise MisconfigurationError(
            f"{option}={policy!r} matches no submodule of {type(root).__name__}; its module classes are "
            f"{', '.join(found[:25])}{', ...' if len(found) > 25 else ''}"
        )
    claimed: set[int] = set()
    units, empty = [], []
    for name, module in reversed(chosen):  # named_modules is parents first: reversed, children come first
        own = [p for p in module.parameters() if id(p) not in claimed]
        if not own:
            empty.append(name or type(root).__name__)
            continue
        claimed.update(id(p) for p in own)
        units.append(module)
    if empty and isinstance(policy, ClassPolicy):
        raise MisconfigurationError(
            f"{option}={policy!r} selects {', '.join(map(repr, empty[:10]))}, which would shard no parameter "
            "(it has none, or units inside it hold them all): a shard unit shards parameters. Leave parameter-free "
            "classes (activations, dropout, containers whose children are units) out of the policy"
        )
    _refuse_ties_across_units(root, units, option)
    return units


def _refuse_ties_across_units(root: nn.Module, units: list[nn.Module], option: str) -> None:
    """A parameter reachable from two units (or from a unit and the root) would be sharded twice: FSDP2 finds it
    only at the first forward, with advice that does not apply here."""
    unit_ids = {id(u) for u in units}
    where: dict[int, dict[str, str]] = {}  # parameter -> {its name there: the innermost unit holding it}

    def walk(module: nn.Module, prefix: str, unit: str) -> None:
        if id(module) in unit_ids:
            unit = prefix.rstrip(".") or "(the model)"
        for name, parameter in module._parameters.items():
            if parameter is not None:
                where.setdefault(id(parameter), {})[prefix + name] = unit
        for name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.", unit)

    walk(root, "", "the root")
    for places in where.values():
        if len(set(places.values())) > 1:
            described = ", ".join(f"{name!r} in unit {unit!r}" if unit != "the root" else f"{name!r} in the root"
                                  for name, unit in places.items())  # fmt: skip
            raise MisconfigurationError(
                f"{option} puts one parameter, tied (shared) as {described}, into two different shard units; FSDP "
                "shards each parameter in one unit. Leave one of those classes out of the policy, or select a module "
                "that holds both"
            )


def select_modules(root: nn.Module, policy: Policy | None, option: str) -> list[nn.Module]:
    """The modules ``policy`` selects (activation checkpointing); a class policy that selects nothing is an error."""
    if policy is None:
        return []
    chosen = [m for m in root.modules() if policy(m)]
    if not chosen and isinstance(policy, ClassPolicy):
        found = sorted({type(m).__name__ for m in root.modules()})
        raise MisconfigurationError(
            f"{option}={policy!r} matches no submodule of {type(root).__name__}; its module classes are "
            f"{', '.join(found[:25])}{', ...' if len(found) > 25 else ''}"
        )
    return chosen
