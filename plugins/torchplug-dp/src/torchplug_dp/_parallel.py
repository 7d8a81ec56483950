"""``nn.DataParallel`` made to run a user's step: scatter any batch, give each replica its own device and log buffer.

Per step, in one process: the batch is split along dim 0 across the GPUs (nested tuples, lists, dicts and, unlike
plain DataParallel, dataclasses), the module is replicated, every replica runs ``<stage>_step`` in its own thread,
and the outputs are gathered on the first GPU. Three things plain DataParallel gets wrong for a training loop are
handled here:

* ``self.device`` inside a replica is that replica's GPU, so ``torch.zeros(..., device=self.device)`` works;
* ``self.log`` from replicas (threads) never touches the trainer's metrics: each replica logs into its own buffer,
  and the buffers are merged in the main thread once every replica has finished, one value per name, combined
  with the metric's ``reduce_fx`` (the mean is weighted by each GPU's share of the batch);
* the autocast dtype is carried into the replica threads (DataParallel carries only "enabled", so bf16 autocast
  would silently become fp16).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import gather, scatter

from torchplug.utilities import apply_to_collection
from torchplug_dp._collections import Path, join_structure, split_structure, weighted_mean

_REDUCE_OPS = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min",
               torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}  # fmt: skip


class ReplicaResults:
    """One replica's ``self.log`` calls of one step, kept in order until the main thread merges them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def log(self, name: str, value: Any, prog_bar: bool, logger: bool, on_step: bool | None, on_epoch: bool | None,
            reduce_fx: Any, sync_dist: bool, batch_size: int | None, add_dataloader_idx: bool) -> None:  # fmt: skip
        """What ``Module.log`` passes to the trainer's results (positionally, as in the core)."""
        options = dict(prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx,
                       sync_dist=sync_dist, batch_size=batch_size, add_dataloader_idx=add_dataloader_idx)  # fmt: skip
        self.calls.append((name, value, options))


class ReplicaTrainer:
    """What a replica sees as ``self.trainer``: the real trainer, except for ``root_device`` (the replica's GPU,
    which ``self.device`` reads) and ``_results`` (the replica's own log buffer). Everything else, reads and
    writes, goes to the real trainer."""

    def __init__(self, trainer: Any, device: torch.device, results: ReplicaResults) -> None:
        object.__setattr__(self, "_dp_trainer", trainer)
        object.__setattr__(self, "_dp_device", device)
        object.__setattr__(self, "_dp_results", results)

    @property
    def root_device(self) -> torch.device:
        return self._dp_device

    @property
    def _results(self) -> ReplicaResults | None:
        return self._dp_results if self._dp_trainer._results is not None else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_dp_"):  # not set yet (a copy being made): no recursion into ourselves
            raise AttributeError(name)
        return getattr(self._dp_trainer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._dp_trainer, name, value)

    def __repr__(self) -> str:
        return f"<replica view of {self._dp_trainer!r} on {self._dp_device}>"


class DataParallel(nn.DataParallel):
    """DataParallel over ``device_ids`` whose ``forward(stage, *args)`` is a whole step of the user's module.

    After each forward, ``per_replica`` holds the paths of the output that carry one value per GPU (losses and
    other scalars, stacked) and ``shares`` each GPU's number of samples, for the strategy to reduce them.
    """

    def __init__(self, module: nn.Module, device_ids: list[int], trainer: Any) -> None:
        super().__init__(module, device_ids=device_ids, output_device=device_ids[0])
        self._trainer = trainer
        self.per_replica: set[Path] = set()
        self.shares: list[int] = []

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        self.per_replica, self.shares = set(), []
        if not self.device_ids:  # no CUDA: DataParallel degrades to calling the module
            return self.module(*inputs, **kwargs)
        devices = list(self.device_ids)
        parts = split_structure(inputs, self._split, len(devices))
        kw_parts = split_structure(kwargs, self._split, len(devices)) if kwargs else [{}] * len(parts)
        count = min(len(parts), len(kw_parts))
        if count == 0:
            raise RuntimeError(f"strategy='dp' cannot split an empty batch (inputs {_describe(inputs)})")
        parts, kw_parts = parts[:count], kw_parts[:count]
        self.shares = _shares(parts, self.dim)
        if count == 1:  # one GPU (or a batch of one sample): no replicas, exactly single_device's step
            return self.module(*parts[0], **kw_parts[0])
        devices = devices[:count]
        replicas = self.replicate(self.module, devices)
        buffers = [ReplicaResults() for _ in devices]
        for replica, device, buffer in zip(replicas, devices, buffers, strict=True):
            _attach(replica, ReplicaTrainer(self._trainer, torch.device("cuda", device), buffer))
        outputs = self._run(replicas, parts, kw_parts, devices)
        merge_logs(self._trainer, buffers, self.shares, self._output_device())
        return join_structure(outputs, self._join, self._stack, self.per_replica)

    # The CUDA work of one step, one method each (tests on machines without GPUs replace them).
    def _split(self, tensor: torch.Tensor) -> Sequence[torch.Tensor]:
        return scatter(tensor, self.device_ids, self.dim)

    def _join(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return gather(tensors, self.output_device, self.dim)

    def _stack(self, scalars: Sequence[torch.Tensor]) -> torch.Tensor:
        return gather([t.reshape(1) for t in scalars], self.output_device, 0)

    def _run(
        self, replicas: Sequence[nn.Module], parts: Sequence[Any], kw_parts: Sequence[dict[str, Any]], devices: list[int]
    ) -> list[Any]:
        return _run_replicas(replicas, parts, kw_parts, devices)

    def _output_device(self) -> torch.device:
        return torch.device("cuda", self.output_device)


def _describe(inputs: Any) -> str:
    return repr(inputs)[:200]


def _shares(parts: list[Any], dim: int) -> list[int]:
    """Samples per replica: the length along ``dim`` of the first tensor that has that dimension in each part
    (equal shares when there is none)."""
    sizes = [_batch_length(part, dim) for part in parts]
    return [1] * len(parts) if None in sizes else sizes  # type: ignore[return-value]


def _batch_length(part: Any, dim: int) -> int | None:
    found: list[int] = []
    apply_to_collection(part, torch.Tensor, lambda t: found.append(int(t.shape[dim])) if t.dim() > dim else None)
    return found[0] if found else None


def _attach(replica: nn.Module, view: ReplicaTrainer) -> None:
    """Point every module of the replica that knows the trainer at the replica's view of it.

    ``replicate`` gives each replica module its own copy of ``__dict__``, so the original module keeps the real
    trainer.
    """
    for module in replica.modules():
        if module.__dict__.get("_trainer") is not None:
            module.__dict__["_trainer"] = view


def _run_replicas(
    replicas: Sequence[nn.Module], parts: Sequence[Any], kw_parts: Sequence[dict[str, Any]], devices: Sequence[int]
) -> list[Any]:
    """Each replica on its own GPU, in its own thread, with the caller's grad mode, autocast and streams."""
    grad_enabled = torch.is_grad_enabled()
    autocast = torch.is_autocast_enabled("cuda")
    autocast_dtype = torch.get_autocast_dtype("cuda")
    autocast_cache = torch.is_autocast_cache_enabled()
    streams = [torch.cuda.current_stream(d) for d in devices]
    results: list[Any] = [None] * len(replicas)
    errors: list[BaseException | None] = [None] * len(replicas)

    def run(i: int) -> None:
        try:
            with (
                torch.set_grad_enabled(grad_enabled),
                torch.cuda.device(devices[i]),
                torch.cuda.stream(streams[i]),
                torch.autocast("cuda", dtype=autocast_dtype, enabled=autocast, cache_enabled=autocast_cache),
            ):
                results[i] = replicas[i](*parts[i], **kw_parts[i])
        except BaseException as err:  # re-raised in the calling thread below
            errors[i] = err

    threads = [threading.Thread(target=run, args=(i,), name=f"torchplug-dp-cuda:{d}") for i, d in enumerate(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for device, error in zip(devices, errors, strict=True):
        if error is not None:
            if hasattr(error, "add_note"):
                error.add_note(f"(raised in the strategy='dp' replica on cuda:{device})")
            raise error
    return results


def merge_logs(trainer: Any, buffers: Sequence[ReplicaResults], shares: Sequence[int], device: torch.device) -> None:
    """Log once, from the calling thread, what the replicas logged: one value per name and call.

    Values are combined with the metric's ``reduce_fx``: ``mean`` weighted by each replica's share of the batch
    (its ``batch_size`` when given), so the result is what one device would have logged for the whole batch;
    ``sum``, ``max`` and ``min`` as named. A value the core would refuse (not a number) is passed on as logged,
    for the core to explain.
    """
    results = trainer._results
    if results is None:
        return
    groups: dict[tuple[str, int], list[tuple[Any, dict[str, Any], int]]] = {}
    for buffer, share in zip(buffers, shares, strict=True):
        seen: dict[str, int] = {}
        for name, value, options in buffer.calls:
            occurrence = seen[name] = seen.get(name, -1) + 1
            groups.setdefault((name, occurrence), []).append((value, options, share))
    for (name, _), entries in groups.items():
        value, options = _combine(entries, device)
        results.log(name, value, **options)


def _combine(entries: list[tuple[Any, dict[str, Any], int]], device: torch.device) -> tuple[Any, dict[str, Any]]:
    values = [value for value, _, _ in entries]
    options = dict(entries[0][1])
    op = _REDUCE_OPS.get(options.get("reduce_fx", "mean")) if _hashable(options.get("reduce_fx", "mean")) else None
    sizes = [o.get("batch_size") for _, o, _ in entries]
    if all(s is not None for s in sizes):
        weights = [float(s) for s in sizes]
        options["batch_size"] = int(sum(weights))
    else:
        weights = [float(share) for _, _, share in entries]
    if op is None or not all(_is_scalar(v) for v in values):
        return values[0], options
    if not any(isinstance(v, torch.Tensor) for v in values):
        numbers = [float(v) for v in values]
        combined: Any = {"mean": lambda: weighted_mean(numbers, weights), "sum": lambda: sum(numbers),
                         "max": lambda: max(numbers), "min": lambda: min(numbers)}[op]()  # fmt: skip
        return combined, options
    stacked = torch.stack(
        [(v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))).reshape(()).to(device, non_blocking=True)
         for v in values]  # fmt: skip
    )
    if op == "mean":
        return weighted_mean(stacked, weights), options
    return getattr(stacked, {"sum": "sum", "max": "amax", "min": "amin"}[op])(0), options


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
