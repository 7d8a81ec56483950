"""Precision plugins: number formats for parameters and compute. The ``*-true`` ones are built in."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


class Precision:
    """Base for precision plugins. Full precision needs no hooks: the core's defaults are its behaviour.

    Capabilities other backends read (``trainer.precision_plugin``), never the precision's name:

    * ``compute_dtype``: the floating-point type the steps compute in while the parameters keep their own
      (float32): ``torch.float16`` for ``16-mixed``, ``torch.bfloat16`` for ``bf16-mixed``. ``None`` (the
      default) when the steps compute in the parameters' dtype: full precision, and the ``*-true`` precisions,
      which convert the parameters themselves (``torchplug_convert_module``). A sharding strategy gathers
      parameters in this dtype and reduces gradients in the parameters' own (FSDP's
      ``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)``).
    """

    compute_dtype: ClassVar[torch.dtype | None] = None

    @classmethod
    def is_available(cls) -> bool:
        return True


__all__ = ["Precision"]
