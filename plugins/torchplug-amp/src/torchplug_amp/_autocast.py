"""Mixed precision with PyTorch's own tools: ``torch.autocast`` around the step, ``torch.amp.GradScaler`` for float16.

Parameters, buffers and inputs are left as they are: autocast runs the operations it lists (matmuls,
convolutions, ...) in 16 bits and keeps the rest in float32. ``16-mixed`` multiplies the loss by a scale before
backward so that small float16 gradients do not flush to zero, divides the gradients back before clipping and
``on_before_optimizer_step``, and skips a step whose gradients overflowed; the core then does not advance the LR
schedulers either. ``bf16-mixed`` has float32's exponent range, so it needs no scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.amp.autocast_mode import is_autocast_available

from torchplug import MisconfigurationError, hookimpl
from torchplug.precision import Precision
from torchplug.utilities import requires_closure

if TYPE_CHECKING:
    from collections.abc import Generator

    from torch import nn
    from torch.optim import Optimizer

    from torchplug import Trainer

#: The key of this package's state in ``checkpoint["plugins"]``.
STATE_KEY = "torchplug_amp"


class AutocastPrecision(Precision):
    """Runs every step (train, validation, test, predict) inside ``torch.autocast(device_type, dtype)``.

    ``device_type`` is the accelerator's answer to ``torchplug_autocast_device_type`` (``cuda``, ``cpu``, ``xla``,
    ...), asked once per run.
    """

    dtype: ClassVar[torch.dtype]

    def __init__(self) -> None:
        self._device_type: str | None = None

    @hookimpl
    def torchplug_convert_module(self, trainer: Trainer, module: nn.Module) -> None:
        # Parameters stay float32, so nothing is converted: this is only the once-per-run point after the module
        # reached its device. Answering None leaves the module to the other plugins and the defaults.
        self._setup(trainer)

    @hookimpl(wrapper=True)
    def torchplug_forward(
        self, trainer: Trainer, stage: str, args: tuple[Any, ...]
    ) -> Generator[None, Any, Any]:
        device_type = self._device_type or self._setup(trainer)
        with torch.autocast(device_type=device_type, dtype=self.dtype):
            return (yield)

    def _setup(self, trainer: Trainer) -> str:
        device_type = trainer.hook.torchplug_autocast_device_type(trainer=trainer)
        if not is_autocast_available(device_type):
            raise MisconfigurationError(
                f"precision={trainer.precision_name!r}: torch {torch.__version__} has no autocast for the device "
                f"type {device_type!r} that accelerator={trainer.accelerator_name!r} names; use "
                "precision='32-true', or an accelerator whose device type autocast supports (cuda, cpu, xla, ...)"
            )
        self._device_type = device_type
        return device_type


class MixedPrecision(AutocastPrecision):
    """``16-mixed`` (aliases ``16``, ``mixed``): float16 autocast and a dynamic loss scale.

    ``scaler`` is an optional ``torch.amp.GradScaler`` of your own (another ``init_scale`` or
    ``growth_interval``); by default one is made for the root device's type (``GradScaler("cpu")`` on the CPU).
    It is available as ``.scaler`` once the run has started.
    """

    dtype = torch.float16

    def __init__(self, scaler: torch.amp.GradScaler | None = None) -> None:
        super().__init__()
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise MisconfigurationError(
                f"scaler={scaler!r}: expected a torch.amp.GradScaler, or None for one made for the device"
            )
        self.scaler = scaler
        self._unscaled: set[int] = set()  # ids of the optimizers unscaled since the scaler's last update()

    def _setup(self, trainer: Trainer) -> str:
        device_type = super()._setup(trainer)
        grads_on = trainer.root_device.type
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(grads_on)
        elif getattr(self.scaler, "_device", grads_on) != grads_on:
            raise MisconfigurationError(
                f"scaler=GradScaler({self.scaler._device!r}): the gradients of this run live on {grads_on!r}; "
                f"pass torch.amp.GradScaler({grads_on!r}) or leave scaler unset"
            )
        return device_type

    def _ready_scaler(self, trainer: Trainer) -> torch.amp.GradScaler:
        if self._device_type is None:
            self._setup(trainer)
        assert self.scaler is not None
        return self.scaler

    def _unscale(self, optimizer: Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale, at most once per step whoever asks first."""
        if id(optimizer) in self._unscaled or self.scaler is None or not _has_gradients(optimizer):
            return
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    @hookimpl
    def torchplug_setup_optimizers(
        self, trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
    ) -> None:
        refuse_closure_optimizers(trainer, optimizers)

    @hookimpl
    def torchplug_backward(self, trainer: Trainer, loss: torch.Tensor, optimizer: Optimizer | None) -> bool:
        self._ready_scaler(trainer).scale(loss).backward()
        return True

    @hookimpl
    def torchplug_unscale_gradients(self, trainer: Trainer, optimizer: Optimizer) -> None:
        self._unscale(optimizer)

    @hookimpl
    def torchplug_clip_gradients(
        self, trainer: Trainer, optimizer: Optimizer, clip_val: float, algorithm: str
    ) -> None:
        # Clipping scaled gradients would clip at clip_val * scale. The step closure has usually unscaled already;
        # a manual-optimization self.clip_gradients() before opt.step() has not. The defaults then clip.
        self._unscale(optimizer)

    @hookimpl
    def torchplug_optimizer_step(
        self, trainer: Trainer, optimizer: Optimizer, closure: Callable[[], Any]
    ) -> bool:
        # GradScaler.step refuses closures: run it here, exactly once.
        closure()
        if not _has_gradients(optimizer):
            # Nothing was backpropagated (training_step returned None): step as full precision would.
            optimizer.step()
            return True
        scaler = self._ready_scaler(trainer)
        self._unscale(optimizer)
        # After unscale_, GradScaler records per device whether it found inf/NaN; scaler.step skips exactly then.
        # Reading it is the one host sync scaler.step makes anyway.
        found_inf = sum(float(v.item()) for v in scaler._found_inf_per_device(optimizer).values())
        scaler.step(optimizer)
        scaler.update()
        self._unscaled.clear()
        return found_inf == 0

    @hookimpl
    def torchplug_state_dict(self, trainer: Trainer) -> dict[str, Any] | None:
        if self.scaler is None:
            return None
        return {STATE_KEY: {"scaler": self.scaler.state_dict()}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer: Trainer, states: dict[str, Any]) -> None:
        state = states.get(STATE_KEY)
        if not state or not state.get("scaler"):  # a checkpoint of another precision, or of a disabled scaler
            return
        self._ready_scaler(trainer).load_state_dict(state["scaler"])


class BF16MixedPrecision(AutocastPrecision):
    """``bf16-mixed`` (alias ``bf16``): bfloat16 autocast. bfloat16 has float32's range: no loss scale."""

    dtype = torch.bfloat16

    def _setup(self, trainer: Trainer) -> str:
        device_type = super()._setup(trainer)
        if device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise MisconfigurationError(
                f"precision={trainer.precision_name!r}: {torch.cuda.get_device_name(trainer.root_device)} does not "
                "support bfloat16; use precision='16-mixed'"
            )
        return device_type


def refuse_closure_optimizers(trainer: Trainer, optimizers: list[Optimizer]) -> None:
    """A GradScaler checks one scaled backward per step; LBFGS-like optimizers re-run the closure inside step()."""
    for optimizer in optimizers:
        if requires_closure(optimizer):
            name = type(optimizer).__name__
            raise MisconfigurationError(
                f"precision={trainer.precision_name!r} cannot step {name}: its step() requires a closure that it "
                f"evaluates several times, which a loss scaler cannot check for overflow. Train {name} with "
                "precision='bf16-mixed' or '32-true', or choose an optimizer whose step() takes no closure "
                "(SGD, Adam, AdamW, ...)"
            )



def _has_gradients(optimizer: Optimizer) -> bool:
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])
