"""``CombinedLoader``: several iterables read together, under Lightning's name and with its four modes.

A dict, list or tuple of loaders (nested too) is combined; each item of the combined iteration is
``(batch, batch_idx, dataloader_idx)``. In ``min_size``, ``max_size_cycle`` and ``max_size`` the batch has the
structure of the given collection (``{"a": batch_a, "b": batch_b}``) and ``dataloader_idx`` is 0; ``sequential``
reads one loader after the other and the batch is that loader's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")


def _is_collection_of_iterables(value: Any) -> bool:
    """A dict, list or tuple is a collection of iterables unless it only holds numbers and strings (``[0, 1, 2]`` is
    itself one iterable), as in Lightning."""
    if not isinstance(value, (dict, list, tuple)):
        return False
    children = value.values() if isinstance(value, dict) else value
    return not all(isinstance(child, (int, float, str)) for child in children)


def flatten(value: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """The leaf iterables of a nested dict/list/tuple, and a function that rebuilds the structure from new leaves."""
    if not _is_collection_of_iterables(value):
        return [value], lambda leaves: leaves[0]
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    parts = [flatten(v) for _, v in items]
    sizes = [len(leaves) for leaves, _ in parts]
    leaves = [leaf for part, _ in parts for leaf in part]

    def rebuild(new: list[Any]) -> Any:
        out, start = [], 0
        for (_, unflatten), size in zip(parts, sizes):
            out.append(unflatten(new[start : start + size]))
            start += size
        return type(value)(zip((k for k, _ in items), out)) if isinstance(value, dict) else type(value)(out)

    return leaves, rebuild


def length(iterable: Any) -> int | float:
    """``len(iterable)``, or ``inf`` for one without a length (an ``IterableDataset`` loader, a generator)."""
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return math.inf


class CombinedLoader(Iterable[Any]):
    """Iterate several loaders together (``mode``: ``min_size`` stops with the shortest, ``max_size_cycle``
    restarts the shorter ones until the longest ends, ``max_size`` gives ``None`` for exhausted ones,
    ``sequential`` runs them one after another)."""

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise ValueError(f"Unsupported mode {mode!r}, please select one of: {list(MODES)}.")
        self._iterables = iterables
        self._mode = mode
        self._flattened, self._rebuild = flatten(iterables)
        self.limits: list[int | float] | None = None

    @property
    def iterables(self) -> Any:
        """The iterables as given (after ``flattened`` was replaced: rebuilt from the new ones)."""
        return self._iterables

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def flattened(self) -> list[Any]:
        return list(self._flattened)

    @flattened.setter
    def flattened(self, leaves: list[Any]) -> None:
        if len(leaves) != len(self._flattened):
            raise ValueError(f"CombinedLoader holds {len(self._flattened)} iterables, got {len(leaves)}")
        self._flattened = list(leaves)
        self._iterables = self._rebuild(self._flattened)

    @property
    def sampler(self) -> Any:
        return self._rebuild([getattr(leaf, "sampler", None) for leaf in self._flattened])

    @property
    def batch_sampler(self) -> Any:
        return self._rebuild([getattr(leaf, "batch_sampler", None) for leaf in self._flattened])

    def _lengths(self) -> list[int | float]:
        lengths = [length(leaf) for leaf in self._flattened]
        if self.limits is not None:
            lengths = [min(n, limit) for n, limit in zip(lengths, self.limits)]
        return lengths

    def __len__(self) -> int:
        total = self._total()
        if total == math.inf:
            raise TypeError("CombinedLoader has no length: one of its iterables has none")
        return int(total)

    def _total(self) -> int | float:
        lengths = self._lengths()
        if not lengths:
            return 0
        if self._mode == "min_size":
            return min(lengths)
        if self._mode == "sequential":
            return sum(lengths)
        return max(lengths)

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        lengths = self._lengths()
        if self._mode == "sequential":
            for dataloader_idx, (leaf, n) in enumerate(zip(self._flattened, lengths)):
                items = iter(leaf) if n == math.inf else itertools.islice(leaf, int(n))
                for batch_idx, batch in enumerate(items):
                    yield batch, batch_idx, dataloader_idx
            return
        yield from ((batch, i, 0) for i, batch in enumerate(self._together(lengths)))

    def _together(self, lengths: list[int | float]) -> Iterator[Any]:
        leaves, mode = self._flattened, self._mode
        pick = min if mode == "min_size" else max
        iterators = [iter(leaf) for leaf in leaves]
        taken = [0] * len(leaves)
        step = 0
        while step < pick(lengths):
            batches = []
            for i in range(len(leaves)):
                batch = None
                if taken[i] < lengths[i]:
                    try:
                        batch = next(iterators[i])
                    except StopIteration:  # an iterable without a length ended: now its length is known
                        lengths[i] = taken[i]
                        if step >= pick(lengths):
                            return
                if taken[i] >= lengths[i]:  # exhausted: None (max_size) or read it again (max_size_cycle)
                    if mode == "max_size":
                        batches.append(None)
                        continue
                    iterators[i], taken[i] = iter(leaves[i]), 0
                    batch = next(iterators[i])
                batches.append(batch)
                taken[i] += 1
            yield self._rebuild(batches)
            step += 1


__all__ = ["CombinedLoader"]
