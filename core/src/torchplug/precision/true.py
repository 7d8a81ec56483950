"""Full precision and the "true" precisions, which cast parameters, buffers and inputs to one dtype."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
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


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class _TruePrecision(Precision):
    """Parameters, buffers, floating-point inputs and the tensors a step creates all in ``dtype``."""

    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.precision

    def convert_module(self, module: nn.Module) -> nn.Module:
        # Floating-point parameters and buffers only: module.to(dtype) would also turn complex buffers real.
        convert = {
            torch.float64: nn.Module.double,
            torch.float16: nn.Module.half,
            torch.bfloat16: nn.Module.bfloat16,
        }
        return convert[self.dtype](module)

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return _default_dtype(self.dtype)

    def forward_context(self) -> AbstractContextManager[Any]:
        # Tensors the step creates (torch.zeros, torch.randn, ...) get the model's dtype too.
        return _default_dtype(self.dtype)

    def convert_input(self, data: Any) -> Any:
        dtype = self.dtype
        return apply_to_collection(data, torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t)

    @hookimpl
    def torchplug_convert_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        return self.convert_module(module)

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        to_device, forward = ops.to_device, ops.forward

        def to_device_and_convert(batch: Any) -> Any:
            return self.convert_input(to_device(batch))

        def forward_in_context(stage: str, args: tuple[Any, ...]) -> Any:
            with self.forward_context():
                return forward(stage, args)

        ops.to_device, ops.forward = to_device_and_convert, forward_in_context
        return ops


class DoublePrecision(_TruePrecision):
    """``64-true`` (alias ``64``): 64-bit floats for parameters, buffers and floating-point inputs."""

    precision = "64-true"
    dtype = torch.float64


class HalfPrecision(_TruePrecision):
    """``16-true`` (float16) or ``bf16-true`` (bfloat16) everywhere: ``HalfPrecision(precision="bf16-true")``.

    No loss scaling: ``16-mixed`` in torchplug-amp is the numerically stable choice for float16 training.
    """

    _dtypes: ClassVar[dict[str, torch.dtype]] = {"16-true": torch.float16, "bf16-true": torch.bfloat16}

    def __init__(self, precision: str = "16-true") -> None:
        if precision not in self._dtypes:
            raise ValueError(
                f"HalfPrecision(precision={precision!r}): precision must be '16-true' or 'bf16-true' (DoublePrecision "
                "is '64-true'; the mixed precisions are torchplug-amp's MixedPrecision)"
            )
        self.precision = precision
        self.dtype = self._dtypes[precision]


class BFloat16Precision(HalfPrecision):
    """``bf16-true``: ``HalfPrecision("bf16-true")``, under the name the entry point gives it."""

    def __init__(self, precision: str = "bf16-true") -> None:
        super().__init__(precision)
