"""Tensors released from the autograd graph (and the GPU): what to keep of a step's outputs."""

from __future__ import annotations

from typing import Any

import torch


def recursive_detach(in_dict: Any, to_cpu: bool = False) -> Any:
    """``in_dict`` (a dict, list, tuple or tensor, nested) with every tensor detached, and moved to the CPU when
    ``to_cpu``; other values are kept as they are, and ``in_dict`` itself is not changed."""
    # imported here, not at the top: torchplug.utilities re-exports this module
    from torchplug.utilities import apply_to_collection

    def detach(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        return tensor.cpu() if to_cpu else tensor

    return apply_to_collection(in_dict, torch.Tensor, detach)
