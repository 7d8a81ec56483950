"""Recognising an out-of-memory error, as the batch size search must (Lightning's ``utilities.memory``)."""

from __future__ import annotations

import gc

import torch

# What torch says when an allocation fails: on CUDA (torch.cuda.OutOfMemoryError, and the older plain RuntimeError),
# in cuDNN (which fails this way when its workspace does not fit), and on the host.
_OOM_MESSAGES = (
    lambda text: "CUDA" in text and "out of memory" in text,
    lambda text: "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED." in text,
    lambda text: "DefaultCPUAllocator: can't allocate memory" in text,
)


def is_oom_error(exception: BaseException) -> bool:
    """Whether ``exception`` means the device (or the host) ran out of memory."""
    if isinstance(exception, torch.cuda.OutOfMemoryError):
        return True
    if (
        not isinstance(exception, RuntimeError)
        or len(exception.args) != 1
        or not isinstance(exception.args[0], str)
    ):
        return False
    return any(matches(exception.args[0]) for matches in _OOM_MESSAGES)


def garbage_collection_cuda() -> None:
    """Free what Python and torch's CUDA allocator can give back (after an out-of-memory error)."""
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exception:  # empty_cache itself may run out of memory
            if not is_oom_error(exception):
                raise
