"""Where a stage's dataloaders come from, how many batches each gives, and iterating them."""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torchplug._errors import MisconfigurationError

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


def dataloaders(trainer: Trainer, kind: str, given: Any, stage: str) -> list[Any]:
    """The loaders of ``kind`` (train, val, test, predict): given, else the datamodule's, else the module's."""
    source = given
    if source is None and trainer.datamodule is not None:
        source = getattr(trainer.datamodule, f"{kind}_dataloader")()
    if source is None:
        method = getattr(trainer.lightning_module, f"{kind}_dataloader", None)
        source = method() if method is not None else None
    if source is None:
        return []
    loaders = list(source) if isinstance(source, (list, tuple)) else [source]
    return [trainer.hook.torchplug_setup_dataloader(trainer=trainer, dataloader=dl, stage=stage) for dl in loaders]


def num_batches(loader: Any, limit: int | float, flag: str) -> int | float:
    """How many batches ``limit`` (an int count or a float fraction) selects; ``inf`` for a loader with no length."""
    try:
        length: int | float = len(loader)
    except TypeError:
        length = math.inf
    if length == 0:
        warnings.warn(
            f"the {_LOADER_NAMES.get(flag, 'a')} dataloader is empty (its length is 0): there is nothing to "
            f"{'train on' if flag == 'limit_train_batches' else 'run'}; make sure this was your intention",
            UserWarning,
            stacklevel=3,
        )
    if isinstance(limit, int):
        return min(length, limit)
    if length == math.inf:
        if limit not in (0.0, 1.0):
            raise MisconfigurationError(
                f"{flag}={limit!r}: a fraction needs a dataloader with a length; use an int number of batches"
            )
        return 0 if limit == 0.0 else math.inf
    count = int(length * limit)
    if count == 0 and limit > 0.0 and length > 0:
        raise MisconfigurationError(
            f"{flag}={limit!r} selects no batch of the {length} of the {_LOADER_NAMES.get(flag, '')} dataloader "
            f"({limit} * {length} < 1). Use at least {flag}={math.ceil(1e4 / length) / 1e4:g}, an int number of batches, or 0 to "
            "skip it on purpose"
        )
    return count


_LOADER_NAMES = {
    "limit_train_batches": "training", "limit_val_batches": "validation", "limit_test_batches": "test",
    "limit_predict_batches": "predict",
}  # fmt: skip


def with_is_last(loader: Iterable[Any], count: int | float) -> Iterator[tuple[Any, bool]]:
    """``(batch, is_last)`` for the first ``count`` batches; without a length, read one ahead to know the last."""
    if count != math.inf:
        last = int(count) - 1
        for i, item in enumerate(itertools.islice(loader, int(count))):
            yield item, i == last
        return
    iterator = iter(loader)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def limited(loader: Iterable[Any], count: int | float) -> Iterator[Any]:
    return iter(loader) if count == math.inf else itertools.islice(loader, int(count))


def step_arguments(method: Callable[..., Any], several_loaders: bool) -> Callable[[Any, int, int], tuple[Any, ...]]:
    """How to call a ``<stage>_step``: with ``batch_idx`` when it takes one, ``dataloader_idx`` with several loaders.

    Lightning's rule: ``batch_idx`` is passed when the method names it, takes ``*args``, or takes two arguments.
    """
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        params = []
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    wants_index = variadic or len(positional) >= 2 or any(p.name == "batch_idx" for p in params)
    if several_loaders:
        return lambda batch, batch_idx, dataloader_idx: (batch, batch_idx, dataloader_idx)
    if wants_index:
        return lambda batch, batch_idx, dataloader_idx: (batch, batch_idx)
    return lambda batch, batch_idx, dataloader_idx: (batch,)
