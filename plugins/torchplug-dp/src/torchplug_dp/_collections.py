"""Splitting a batch into per-GPU pieces and joining per-GPU outputs, for nested tuples, lists, dicts and dataclasses.

The structure walk is separate from the tensor work (``split`` and ``join`` are given), so it can be checked on
a machine without GPUs; :mod:`torchplug_dp._parallel` passes DataParallel's autograd-aware scatter and gather.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

#: Where in an output a value sits: the keys, indices and field names leading to it.
Path = tuple[Any, ...]


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _init_fields(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.init]


def split_structure(obj: Any, split: Callable[[torch.Tensor], Sequence[Any]], copies: int) -> list[Any]:
    """``obj`` cut into per-replica pieces: every tensor by ``split``, everything else repeated.

    Returns as many pieces as the shortest split gives (a batch smaller than the number of GPUs uses fewer
    GPUs), and never more than ``copies``: the ``zip`` calls below truncate on purpose.
    """
    if isinstance(obj, torch.Tensor):
        # A 0-dim tensor has no batch dimension to cut (DataParallel would fail on it): every replica gets it.
        return list(split(obj)) if obj.dim() else [obj] * copies
    if _is_namedtuple(obj):
        return [type(obj)(*parts) for parts in zip(*(split_structure(o, split, copies) for o in obj), strict=False)]
    if isinstance(obj, (tuple, list)) and obj:
        return [type(obj)(parts) for parts in zip(*(split_structure(o, split, copies) for o in obj), strict=False)]
    if isinstance(obj, Mapping) and obj:
        keys = list(obj)
        per_key = zip(*(split_structure(obj[k], split, copies) for k in keys), strict=False)
        return [_rebuild_mapping(obj, zip(keys, values, strict=True)) for values in per_key]
    if _is_dataclass_instance(obj):
        names = _init_fields(obj)
        if names:
            per_field = zip(*(split_structure(getattr(obj, n), split, copies) for n in names), strict=False)
            return [dataclasses.replace(obj, **dict(zip(names, values, strict=True))) for values in per_field]
    return [obj] * copies


def _rebuild_mapping(like: Mapping[Any, Any], items: Any) -> Any:
    try:
        return type(like)(items)
    except TypeError:  # mappings whose constructor takes something else (defaultdict): a plain dict
        return dict(items)


def join_structure(
    outputs: Sequence[Any],
    join: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    stack: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    per_replica: set[Path],
    path: Path = (),
) -> Any:
    """One output from the replicas' outputs (same structure in each).

    Tensors with a batch dimension are joined with ``join`` (concatenated along it); one value per replica
    (0-dim tensors, Python numbers) is stacked with ``stack`` into one entry per replica, and its path added to
    ``per_replica`` so that the caller can reduce it.
    """
    first = outputs[0]
    if first is None:
        if any(o is not None for o in outputs):
            raise RuntimeError(
                "strategy='dp': the step returned None on some GPUs and a value on others; skip a batch by "
                "returning None on every GPU (decide from values that do not depend on the GPU's share)"
            )
        return None
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            per_replica.add(path)
            return stack(outputs)
        return join(outputs)
    if isinstance(first, (bool, int, float)):
        per_replica.add(path)
        return list(outputs)
    if _is_namedtuple(first):
        return type(first)(*(join_structure([o[i] for o in outputs], join, stack, per_replica, (*path, i))
                             for i in range(len(first))))  # fmt: skip
    if isinstance(first, (tuple, list)):
        return type(first)(
            join_structure([o[i] for o in outputs], join, stack, per_replica, (*path, i)) for i in range(len(first))
        )
    if isinstance(first, Mapping):
        return _rebuild_mapping(
            first,
            ((k, join_structure([o[k] for o in outputs], join, stack, per_replica, (*path, k))) for k in first),
        )
    if _is_dataclass_instance(first):
        return dataclasses.replace(
            first,
            **{
                n: join_structure([getattr(o, n) for o in outputs], join, stack, per_replica, (*path, n))
                for n in _init_fields(first)
            },
        )
    return first


def reduce_paths(output: Any, paths: set[Path], weights: Sequence[float], path: Path = ()) -> Any:
    """``output`` with the per-replica values at ``paths`` replaced by their mean, weighted by ``weights``.

    The weights are each replica's share of the batch, so per-GPU means combine into the mean over the whole
    batch, as one device would have computed it. The arithmetic stays on the device (no host synchronisation).
    """
    if not paths:
        return output
    if path in paths:
        return weighted_mean(output, weights)
    if _is_namedtuple(output):
        return type(output)(*(reduce_paths(v, paths, weights, (*path, i)) for i, v in enumerate(output)))
    if isinstance(output, (tuple, list)):
        return type(output)(reduce_paths(v, paths, weights, (*path, i)) for i, v in enumerate(output))
    if isinstance(output, Mapping):
        return _rebuild_mapping(output, ((k, reduce_paths(v, paths, weights, (*path, k))) for k, v in output.items()))
    if _is_dataclass_instance(output):
        return dataclasses.replace(
            output, **{n: reduce_paths(getattr(output, n), paths, weights, (*path, n)) for n in _init_fields(output)}
        )
    return output


def weighted_mean(values: torch.Tensor | Sequence[float], weights: Sequence[float]) -> Any:
    """Mean over the first dimension of per-replica ``values`` (a tensor, or a list of numbers), weighted.

    Integer values average to a float. Equal weights give the plain mean.
    """
    total = float(sum(weights))
    if not isinstance(values, torch.Tensor):
        return sum(v * (w / total) for v, w in zip(values, weights, strict=True))
    if not values.is_floating_point():
        values = values.float()
    if all(w == weights[0] for w in weights):
        return values.mean(0)
    # Python-float weights: a weights tensor would be one more host-to-device copy on every step.
    return sum(values[i] * (w / total) for i, w in enumerate(weights))
