"""Collectives on tensors only: the CPU wheel of torch has no numpy, which ``*_object`` collectives need."""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist

from torchplug import MisconfigurationError

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
_ALIASES = {"avg": "mean", "average": "mean", "add": "sum"}


def active() -> bool:
    """Whether a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def all_reduce(tensor: torch.Tensor, op: str, device: torch.device | None = None) -> torch.Tensor:
    """A reduced copy of ``tensor`` (``mean`` is the sum divided by the world size); the input is untouched.

    The reduction runs on ``device`` (the process group's device: NCCL has no CPU tensors) and the result comes
    back on the tensor's own device.
    """
    name = _ALIASES.get(str(op).lower(), str(op).lower())
    if name not in _OPS:
        raise MisconfigurationError(f"reduce_fx={op!r}: processes can be reduced with 'mean', 'sum', 'max' or 'min'")
    result = tensor.detach().clone()
    if result.dtype == torch.bool:
        result = result.to(torch.int64)
    if name == "mean" and not (result.is_floating_point() or result.is_complex()):
        result = result.to(torch.get_default_dtype())
    if not active():
        return result
    home = result.device
    if device is not None and home != device:
        result = result.to(device)
    dist.all_reduce(result, op=_OPS[name])
    if name == "mean":
        result /= dist.get_world_size()
    return result.to(home) if result.device != home else result


def broadcast_object(obj: Any, src: int, device: torch.device) -> Any:
    """Pickle ``obj`` on rank ``src`` and unpickle it on every rank, with two tensor broadcasts."""
    if not active():
        return obj
    if dist.get_rank() == src:
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        payload = None
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buffer = payload.to(device) if payload is not None else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src)
    if dist.get_rank() == src:
        return obj
    return pickle.loads(bytes(buffer.cpu().contiguous().untyped_storage())[: int(size.item())])


def all_gather(tensor: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """``tensor`` from every rank stacked along a new first dimension (rank order), on the tensor's device."""
    if not active():
        return tensor.unsqueeze(0)
    home = tensor.device
    local = tensor.detach().contiguous().to(device) if device is not None else tensor.detach().contiguous()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).to(home)


def gather_objects(obj: Any, device: torch.device) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (pickled into padded tensors)."""
    if not active():
        return [obj]
    payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded)
    return [
        pickle.loads(bytes(buffer.cpu().contiguous().untyped_storage())[: int(s.item())])
        for buffer, s in zip(buffers, sizes)
    ]


def barrier(device: torch.device) -> None:
    if not active():
        return
    if dist.get_backend() == "nccl" and device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
