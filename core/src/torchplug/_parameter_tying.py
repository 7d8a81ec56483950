"""Tied parameters (one tensor under several names): finding them, and tying them again after a module was
copied or re-created (``to_empty``, meta-device init, some strategies' wrapping)."""

from __future__ import annotations

from torch import nn


def find_shared_parameters(module: nn.Module) -> list[list[str]]:
    """The groups of names under which the same parameter appears in ``module``, e.g.
    ``[["encoder.embed.weight", "decoder.out.weight"]]``; ``[]`` when no parameter is shared."""
    groups: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def set_shared_parameters(module: nn.Module, shared_params: list[list[str]]) -> nn.Module:
    """Tie each group of ``shared_params`` (as :func:`find_shared_parameters` returns them): every name in a group
    is made to refer to the parameter of the group's first name. Returns ``module``."""
    for names in shared_params:
        first, *others = names
        parameter = module.get_parameter(first)
        for name in others:
            owner_name, _, attribute = name.rpartition(".")
            try:
                owner = module.get_submodule(owner_name)
            except AttributeError:
                raise AttributeError(
                    f"set_shared_parameters: {type(module).__name__} has no submodule {owner_name!r} (for {name!r}); "
                    "the names are those of module.named_parameters()"
                ) from None
            setattr(owner, attribute, parameter)
    return module
