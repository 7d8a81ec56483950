"""``torch.compile``'d modules: the Trainer takes ``torch.compile(model)`` as Lightning does.

``torch.compile`` returns an ``OptimizedModule`` that wraps the module without being one. :func:`from_compiled`
gives back the module itself with its ``forward`` and ``*_step`` methods compiled by the same compiler context, so
that the Trainer's hooks, logging and checkpoints see the user's module; :func:`to_uncompiled` undoes it.
"""

from __future__ import annotations

from typing import Any

#: The methods compiled on the module (its other hooks run eagerly).
_COMPILED = ("forward", "training_step", "validation_step", "test_step", "predict_step")
_ABSENT = object()


def is_compiled_wrapper(model: Any) -> bool:
    from torch._dynamo import OptimizedModule

    return isinstance(model, OptimizedModule)


def from_compiled(model: Any) -> Any:
    """The ``Module`` that ``torch.compile(module)`` wrapped, its ``forward`` and ``*_step`` methods compiled."""
    from torchplug.module import Module

    if not is_compiled_wrapper(model):
        raise ValueError(
            f"from_compiled(model): `model` is required to be an `OptimizedModule` (what torch.compile returns). "
            f"Found a `{type(model).__name__}` instead"
        )
    original = model._orig_mod
    if not isinstance(original, Module):
        raise ValueError(
            f"from_compiled(model): `model` is expected to be a compiled LightningModule (a torchplug.Module). Found "
            f"a `{type(original).__name__}` instead"
        )
    if getattr(original, "_uncompiled", None) is not None:
        to_uncompiled(original)  # compiled again (another compiler context): start from the plain methods
    original._uncompiled = {name: original.__dict__.get(name, _ABSENT) for name in _COMPILED}
    for name in _COMPILED:
        setattr(original, name, model.dynamo_ctx(getattr(original, name)))
    return original


def to_uncompiled(model: Any) -> Any:
    """The module without the compilation :func:`from_compiled` (or ``torch.compile``) applied to it."""
    from torchplug.module import Module

    original = model._orig_mod if is_compiled_wrapper(model) else model
    if not isinstance(original, Module):
        raise ValueError(
            f"to_uncompiled(model): `model` must be an OptimizedModule or a LightningModule (a torchplug.Module), "
            f"got a `{type(original).__name__}`"
        )
    saved = getattr(original, "_uncompiled", None)
    if saved is None:
        if original is model:
            raise ValueError(
                "to_uncompiled(model): `model` is required to be a compiled LightningModule. Found a non-compiled "
                "LightningModule instead"
            )
        return original
    for name, method in saved.items():
        if method is _ABSENT:
            original.__dict__.pop(name, None)
        else:
            setattr(original, name, method)
    original._uncompiled = None
    return original
