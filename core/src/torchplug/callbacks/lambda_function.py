"""``LambdaCallback``: a callback made of functions, one per hook (``LambdaCallback(on_fit_start=fn)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback


class LambdaCallback(Callback):
    """Each keyword names a hook and gives the function to call there, with the hook's arguments
    (``trainer, pl_module, ...``)."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        known = {n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")}
        for name, function in hooks.items():
            if name not in known:
                raise MisconfigurationError(
                    f"LambdaCallback({name}=...): {name!r} is not a callback hook; hooks: {', '.join(sorted(known))}"
                )
            if function is not None:
                setattr(self, name, function)


__all__ = ["LambdaCallback"]
