"""Where a hyperparameter such as ``lr`` or ``batch_size`` lives: on the module, in its ``hparams``, on the
datamodule of the run or in the datamodule's ``hparams`` (Lightning's ``lightning_getattr``/``lightning_setattr``)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from torchplug.module import Module


def holders(module: Module, name: str) -> list[Any]:
    """Every place that holds ``name``, in the order module, module.hparams, datamodule, datamodule.hparams."""
    found: list[Any] = []
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    for owner in (module, datamodule):
        if owner is None:
            continue
        if hasattr(owner, name):
            found.append(owner)
        hparams = getattr(owner, "hparams", None)
        if isinstance(hparams, MutableMapping) and name in hparams:
            found.append(hparams)
    return found


def has(module: Module, name: str) -> bool:
    return bool(holders(module, name))


def get(module: Module, name: str) -> Any:
    """The value of ``name``; the datamodule's wins, as it makes the data."""
    found = holders(module, name)
    if not found:
        raise AttributeError(where_missing(name))
    last = found[-1]
    return last[name] if isinstance(last, MutableMapping) else getattr(last, name)


def set_everywhere(module: Module, name: str, value: Any) -> None:
    """Set ``name`` to ``value`` in every place that holds it."""
    found = holders(module, name)
    if not found:
        raise AttributeError(where_missing(name))
    for holder in found:
        if isinstance(holder, MutableMapping):
            holder[name] = value
        else:
            setattr(holder, name, value)


def where_missing(name: str) -> str:
    return f"{name} is neither stored in the model nor in the datamodule, nor in their hparams"
