"""Gradient norms, per parameter and in total: what to log from ``on_before_optimizer_step``."""

from __future__ import annotations

import functools

import torch
from torch import nn


def grad_norm(module: nn.Module, norm_type: float | int | str) -> dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, as ``{"grad_<p>_norm/<name>": norm}``, and of all of
    them together as ``"grad_<p>_norm_total"``; parameters without a gradient are left out.

    ``norm_type`` is a positive number or ``"inf"`` (the largest absolute value). Typical use::

        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self, norm_type=2))
    """
    p = float(norm_type)
    if p <= 0:
        raise ValueError(f"`norm_type` must be a positive number or 'inf' (infinity norm). Got {norm_type!r}")
    norms = {
        f"grad_{p}_norm/{name}": torch.linalg.vector_norm(param.grad.detach(), ord=p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if norms:
        # the norm of the per-parameter norms is the norm over all gradients, computed in their widest dtype
        values = list(norms.values())
        dtype = functools.reduce(torch.promote_types, (value.dtype for value in values))
        stacked = torch.stack([value.to(dtype=dtype, device=values[0].device) for value in values])
        norms[f"grad_{p}_norm_total"] = torch.linalg.vector_norm(stacked, ord=p)
    return norms
