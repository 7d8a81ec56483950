"""Mixed precision with PyTorch's own tools: ``torch.autocast`` around the step, ``torch.amp.GradScaler`` for float16.

Parameters, buffers and inputs are left as they are: autocast runs the operations it lists (matmuls,
convolutions, ...) in 16 bits and keeps the rest in float32. ``16-mixed`` multiplies the loss by a scale before
backward so that small float16 gradients do not flush to zero, divides the gradients back before clipping and
``on_before_optimizer_step``, and skips a step whose gradients overflowed; the core then does not advance the LR
schedulers either. ``bf16-mixed`` has float32's exponent range, so it needs no scale.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.amp.autocast_mode import is_autocast_available

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.precision import Precision
from torchplug.utilities import requires_closure

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from torchplug import Trainer

#: The key of this package's state among each rank's plugin states in a checkpoint (docs/checkpoints.md).
STATE_KEY = "torchplug_amp"


class AutocastPrecision(Precision):
    """Runs every step (train, validation, test, predict) inside ``torch.autocast(device_type, dtype)``.

    ``device_type`` is the accelerator's declared device type (``trainer.run.device_type``: ``cuda``, ``cpu``,
    ``xla``, ...). ``autocast_context_manager()`` makes the context; ``forward_context()`` is it, entered around
    each step.
    """

    dtype: ClassVar[torch.dtype]
    device: str | None = None  # a device (type) given by the user; otherwise the run's
    _run_device_type: str | None = None

    @property
    def name(self) -> str:
        return self.precision

    def autocast_context_manager(self) -> torch.autocast:
        """``torch.autocast`` for this precision's dtype on the device given, else the run's (the CPU outside one)."""
        device_type = torch.device(self.device).type if self.device is not None else self._run_device_type
        return torch.autocast(device_type=device_type or "cpu", dtype=self.dtype)

    def forward_context(self) -> torch.autocast:
        return self.autocast_context_manager()

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        device_type = trainer.run.device_type
        if not is_autocast_available(device_type):
            raise MisconfigurationError(
                f"precision={trainer.precision_name!r}: torch {torch.__version__} has no autocast for the device "
                f"type {device_type!r} of accelerator={trainer.accelerator_name!r}; use precision='32-true', or an "
                "accelerator whose device type autocast supports (cuda, cpu, xla, ...)"
            )
        if self.device is not None and torch.device(self.device).type != device_type:
            raise MisconfigurationError(
                f"{type(self).__name__}(device={self.device!r}) autocasts on {torch.device(self.device).type!r}, but "
                f"accelerator={trainer.accelerator_name!r} runs on {device_type!r}: pass device={device_type!r}, or "
                "leave device unset to use the run's"
            )
        self._run_device_type = device_type

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        forward = ops.forward

        def forward_in_autocast(stage: str, args: tuple[Any, ...]) -> Any:
            with self.forward_context():
                return forward(stage, args)

        ops.forward = forward_in_autocast
        return ops


class MixedPrecision(AutocastPrecision):
    """``16-mixed`` (aliases ``16``, ``mixed``): float16 autocast and a dynamic loss scale; with
    ``precision="bf16-mixed"``, bfloat16 autocast and no scale (bfloat16 has float32's range).

    Lightning's signature: ``MixedPrecision(precision, device, scaler)``. ``device`` (``"cuda"``, ``"cpu"``, ...)
    is the run's device type when left unset. ``scaler`` is an optional ``torch.amp.GradScaler`` of your own
    (another ``init_scale`` or ``growth_interval``); by default one is made for the root device's type
    (``GradScaler("cpu")`` on the CPU). It is available as ``.scaler`` once the run has started; ``None`` for
    ``bf16-mixed``.
    """

    dtype = torch.float16
    compute_dtype = torch.float16
    precision = "16-mixed"
    _dtypes: ClassVar[dict[str, torch.dtype]] = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}

    def __init__(
        self,
        precision: str = "16-mixed",
        device: str | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if precision not in self._dtypes:
            raise ValueError(
                f"Passed `{type(self).__name__}(precision={precision!r})`. Precision must be '16-mixed' or "
                "'bf16-mixed' (the *-true precisions are torchplug.precision's HalfPrecision and DoublePrecision)"
            )
        if scaler is not None and precision == "bf16-mixed":
            raise MisconfigurationError(
                f"{type(self).__name__}(precision='bf16-mixed', scaler={scaler!r}): bfloat16 needs no loss scale; "
                "leave scaler unset, or use precision='16-mixed'"
            )
        if scaler is not None and not all(callable(getattr(scaler, m, None)) for m in _SCALER_METHODS):
            raise MisconfigurationError(
                f"scaler={scaler!r}: expected a torch.amp.GradScaler, or None for one made for the device"
            )
        if device is not None:
            torch.device(device)  # a clear error now for a device string torch does not know
        self.precision, self.device, self.scaler = precision, device, scaler
        self.dtype = self.compute_dtype = self._dtypes[precision]
        self._unscaled: set[int] = set()  # ids of the optimizers unscaled since the scaler's last update()

    @property
    def _scales(self) -> bool:
        return self.dtype == torch.float16

    def _ready_scaler(self, trainer: Trainer) -> torch.amp.GradScaler:
        grads_on = trainer.root_device.type
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(grads_on)
        elif getattr(self.scaler, "_device", grads_on) != grads_on:
            raise MisconfigurationError(
                f"scaler=GradScaler({self.scaler._device!r}): the gradients of this run live on {grads_on!r}; "
                f"pass torch.amp.GradScaler({grads_on!r}) or leave scaler unset"
            )
        return self.scaler

    def _unscale(self, optimizer: Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale, at most once per step whoever asks first."""
        if id(optimizer) in self._unscaled or self.scaler is None or not _has_gradients(optimizer):
            return
        self.scaler.unscale_(optimizer)
        self._unscaled.add(id(optimizer))

    def clip_gradients(
        self, optimizer: Optimizer, clip_val: int | float = 0.0, gradient_clip_algorithm: str = "norm"
    ) -> None:
        if clip_val > 0 and self._scales:
            refuse_clipping_if_fused(optimizer)
        super().clip_gradients(optimizer, clip_val, gradient_clip_algorithm)

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        device = trainer.root_device
        if not self._scales and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise MisconfigurationError(
                f"precision={trainer.precision_name!r}: {torch.cuda.get_device_name(device)} does not support "
                "bfloat16; use precision='16-mixed'"
            )

    @hookimpl
    def torchplug_setup_optimizers(
        self, trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
    ) -> None:
        if self._scales:
            refuse_closure_optimizers(trainer, optimizers)

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield from super().torchplug_step_ops(trainer)
        if not self._scales:  # bfloat16: autocast alone; backward and the step are full precision's
            return ops
        scaler = self._ready_scaler(trainer)
        backward, prepare_gradients, clip_gradients = ops.backward, ops.prepare_gradients, ops.clip_gradients
        self._unscaled.clear()

        def scaled_backward(loss: torch.Tensor, optimizer: Optimizer | None) -> None:
            backward(scaler.scale(loss), optimizer)

        def prepare_and_unscale(optimizer: Optimizer) -> None:
            prepare_gradients(optimizer)
            self._unscale(optimizer)

        def unscale_and_clip(optimizer: Optimizer, value: float, algorithm: str) -> None:
            # Clipping scaled gradients would clip at value * scale. The step closure has usually unscaled
            # already; a manual-optimization self.clip_gradients() before opt.step() has not.
            if value > 0:
                refuse_clipping_if_fused(optimizer)
            self._unscale(optimizer)
            clip_gradients(optimizer, value, algorithm)

        def scaled_step(optimizer: Optimizer, closure: Callable[[], Any], **kwargs: Any) -> bool:
            # GradScaler.step refuses closures: run it here, exactly once.
            closure()
            if not _has_gradients(optimizer):
                # Nothing was backpropagated (training_step returned None): step as full precision would.
                optimizer.step(**kwargs)
                return True
            self._unscale(optimizer)
            # After unscale_, GradScaler records per device whether it found inf/NaN; scaler.step skips exactly
            # then. Reading it is the one host sync scaler.step makes anyway.
            found_inf = sum(float(v.item()) for v in scaler._found_inf_per_device(optimizer).values())
            scaler.step(optimizer, **kwargs)
            scaler.update()
            self._unscaled.clear()
            return found_inf == 0

        ops.backward, ops.prepare_gradients = scaled_backward, prepare_and_unscale
        ops.clip_gradients, ops.optimizer_step = unscale_and_clip, scaled_step
        return ops

    @hookimpl
    def torchplug_state_dict(self, trainer: Trainer) -> dict[str, Any] | None:
        if self.scaler is None:
            return None
        return {STATE_KEY: {"scaler": self.scaler.state_dict()}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer: Trainer, states: Mapping[str, Any]) -> None:
        state = states.get(STATE_KEY)
        if (
            not self._scales or not state or not state.get("scaler")
        ):  # another precision's, or a disabled scaler
            return
        self._ready_scaler(trainer).load_state_dict(state["scaler"])


class BF16MixedPrecision(MixedPrecision):
    """``bf16-mixed`` (alias ``bf16``): ``MixedPrecision("bf16-mixed")`` under the name the entry point gives it."""

    dtype = torch.bfloat16
    compute_dtype = torch.bfloat16
    precision = "bf16-mixed"

    def __init__(self, precision: str = "bf16-mixed", device: str | None = None, scaler: Any = None) -> None:
        super().__init__(precision, device, scaler)


_SCALER_METHODS = ("scale", "unscale_", "step", "update")


def refuse_clipping_if_fused(optimizer: Optimizer) -> None:
    """A fused optimizer (``fused=True``) unscales inside its own step, after any clipping could run."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        raise RuntimeError(
            f"The current optimizer, {type(optimizer).__qualname__}, does not allow for gradient clipping because it "
            "performs unscaling of gradients internally (fused=True). Clip without it: create the optimizer with "
            "fused=False, or set gradient_clip_val=None"
        )


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


class MixedPrecisionPlugin(MixedPrecision):
    """Deprecated name (Lightning before 2.1) of :class:`MixedPrecision`; same arguments."""

    def __init__(self, precision: str = "16-mixed", device: str | None = None, scaler: Any = None) -> None:
        from torchplug.precision.deprecated import warn_renamed

        warn_renamed("MixedPrecisionPlugin", "torchplug_amp.MixedPrecision")
        super().__init__(precision, device, scaler)
