"""Precision plugins: number formats for parameters and compute. The ``*-true`` ones are built in."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim import Optimizer


class Precision:
    """Base for precision plugins. Full precision needs no hooks: the core's defaults are its behaviour.

    Capabilities other backends read (``trainer.precision_plugin``), never the precision's name:

    * ``compute_dtype``: the floating-point type the steps compute in while the parameters keep their own
      (float32): ``torch.float16`` for ``16-mixed``, ``torch.bfloat16`` for ``bf16-mixed``. ``None`` (the
      default) when the steps compute in the parameters' dtype: full precision, and the ``*-true`` precisions,
      which convert the parameters themselves (``torchplug_convert_module``). A sharding strategy gathers
      parameters in this dtype and reduces gradients in the parameters' own (FSDP's
      ``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)``).

    Lightning's precision API, for code that calls a plugin directly (a subclass overrides what it changes; the
    built-in plugins' hooks are made of these methods, so an override applies to the Trainer's runs as well):

    * ``precision``: the name (``"32-true"``, ``"bf16-true"``, ``"16-mixed"``, ...);
    * ``convert_module(module)``: the module with its parameters and buffers in the precision's dtype;
    * ``module_init_context()`` / ``tensor_init_context()``: a block in which new modules and tensors are made in
      that dtype (``configure_model`` and ``trainer.init_module()`` run in it);
    * ``forward_context()``: the block each step runs in; ``convert_input(data)`` / ``convert_output(data)``: a
      batch on its way in, a step's result on its way out;
    * ``clip_gradients(optimizer, clip_val, gradient_clip_algorithm)``, ``clip_grad_by_value``,
      ``clip_grad_by_norm``; ``connect(model, optimizers, lr_schedulers)``.
    """

    compute_dtype: ClassVar[torch.dtype | None] = None
    precision: str = "32-true"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def connect(
        self, model: nn.Module, optimizers: list[Optimizer], lr_schedulers: list[Any]
    ) -> tuple[Any, ...]:
        """The model, optimizers and schedulers as this precision trains them (unchanged by default)."""
        return model, optimizers, lr_schedulers

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module

    def tensor_init_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def module_init_context(self) -> AbstractContextManager[Any]:
        return self.tensor_init_context()

    def forward_context(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def convert_input(self, data: Any) -> Any:
        return data

    def convert_output(self, data: Any) -> Any:
        return data

    def clip_gradients(
        self, optimizer: Optimizer, clip_val: int | float = 0.0, gradient_clip_algorithm: str = "norm"
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters; nothing to do when ``clip_val`` is 0."""
        if clip_val <= 0:
            return
        algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm)).lower()
        if algorithm == "value":
            self.clip_grad_by_value(optimizer, clip_val)
        elif algorithm == "norm":
            self.clip_grad_by_norm(optimizer, clip_val)
        else:
            raise ValueError(
                f"gradient_clip_algorithm={gradient_clip_algorithm!r}: use 'norm' or 'value' (GradClipAlgorithmType)"
            )

    def clip_grad_by_value(self, optimizer: Optimizer, clip_val: int | float) -> None:
        import torch

        torch.nn.utils.clip_grad_value_(_parameters(optimizer), clip_val)

    def clip_grad_by_norm(self, optimizer: Optimizer, clip_val: int | float) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(_parameters(optimizer), clip_val)


def _parameters(optimizer: Optimizer) -> list[Any]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def __getattr__(name: str) -> Any:
    # The built-in precisions live in precision.true, which imports this module: load it on first use.
    if name in ("DoublePrecision", "HalfPrecision", "BFloat16Precision", "FullPrecision"):
        from torchplug.precision import true

        return getattr(true, name)
    if name in ("PrecisionPlugin", "HalfPrecisionPlugin", "DoublePrecisionPlugin"):  # Lightning's old names
        from torchplug.precision import deprecated

        return getattr(deprecated, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BFloat16Precision",
    "DoublePrecision",
    "DoublePrecisionPlugin",
    "FullPrecision",
    "HalfPrecision",
    "HalfPrecisionPlugin",
    "Precision",
    "PrecisionPlugin",
]
