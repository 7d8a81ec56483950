"""Full precision and the "true" half precisions, which cast parameters, buffers and inputs."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchplug._hooks import hookimpl
from torchplug._step import StepOps
from torchplug.precision import Precision
from torchplug.utilities import apply_to_collection

if TYPE_CHECKING:
    from torchplug.trainer import Trainer


class FullPrecision(Precision):
    """32-bit floats everywhere: the core's defaults, nothing to do."""


class _TruePrecision(Precision):
    dtype: ClassVar[torch.dtype]

    @hookimpl
    def torchplug_convert_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.dtype)

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        dtype, to_device, forward = self.dtype, ops.to_device, ops.forward

        def cast(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(dtype) if tensor.is_floating_point() else tensor

        def to_device_and_cast(batch: Any) -> Any:
            return apply_to_collection(to_device(batch), torch.Tensor, cast)

        def forward_in_dtype(stage: str, args: tuple[Any, ...]) -> Any:
            # Tensors the step creates (torch.zeros, torch.randn, ...) get the model's dtype too.
            default = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                return forward(stage, args)
            finally:
                torch.set_default_dtype(default)

        ops.to_device, ops.forward = to_device_and_cast, forward_in_dtype
        return ops


class DoublePrecision(_TruePrecision):
    """64-bit floats: parameters, buffers and floating-point inputs."""

    dtype = torch.float64


class HalfPrecision(_TruePrecision):
    """16-bit floats everywhere (no loss scaling; ``16-mixed`` in torchplug-amp is the stable choice)."""

    dtype = torch.float16


class BFloat16Precision(_TruePrecision):
    """bfloat16 everywhere: parameters, buffers and floating-point inputs."""

    dtype = torch.bfloat16
