"""Random states: ``isolate_rng``, a block whose random draws leave the process's generators as they were."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Iterator[None]:
    """Run the block, then put back the states of Python's ``random``, NumPy's global generator (when installed),
    torch's CPU generator and, with ``include_cuda``, torch's CUDA generators: what the block draws does not change
    what the code after it draws."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    try:
        import numpy
    except ImportError:
        numpy = None  # type: ignore[assignment]
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    if include_cuda:
        states["cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    try:
        yield
    finally:
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if numpy is not None:
            numpy.random.set_state(states["numpy"])
        if include_cuda:
            torch.cuda.set_rng_state_all(states["cuda"])
