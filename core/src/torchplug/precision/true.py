"""Full precision and the "true" half precisions, which cast parameters and buffers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from torchplug._hooks import hookimpl
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
    def torchplug_forward(self, trainer: Trainer, stage: str, args: tuple[Any, ...]) -> Any:
        # Floating-point inputs are cast to the model's dtype; everything else is left alone.
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            return (yield)
        finally:
            torch.set_default_dtype(default)

    @hookimpl
    def torchplug_convert_batch(self, trainer: Trainer, batch: Any) -> Any:
        def convert(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

        return apply_to_collection(batch, torch.Tensor, convert)


class DoublePrecision(_TruePrecision):
    """64-bit floats: parameters, buffers and floating-point inputs."""

    dtype = torch.float64


class HalfPrecision(_TruePrecision):
    """16-bit floats everywhere (no loss scaling; ``16-mixed`` in torchplug-amp is the stable choice)."""

    dtype = torch.float16


class BFloat16Precision(_TruePrecision):
    """bfloat16 everywhere: parameters, buffers and floating-point inputs."""

    dtype = torch.bfloat16
