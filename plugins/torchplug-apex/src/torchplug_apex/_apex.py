"""NVIDIA apex's ``amp`` as a precision plugin: ``Trainer(precision=16, amp_level="O2")`` or ``precision="apex"``.

apex's ``amp`` is the route older Lightning code used before ``torch.autocast`` existed. It is CUDA-only, NVIDIA
deprecated it in 2022 and removed it in apex 25.07; tag 25.04 is the last release that has it. New code should use
``precision="16-mixed"`` or ``"bf16-mixed"`` (torchplug-amp).

The order apex needs, and where each part happens here:

1. the module is on its GPU and ``configure_optimizers`` has run (the core, before ``torchplug_setup_optimizers``);
2. ``amp.initialize(module, optimizers, opt_level, num_losses=len(optimizers))``, once per process
   (:meth:`ApexPrecision.torchplug_setup_optimizers`); the core re-points the LR schedulers at what it returns;
3. the strategy wraps the module (DistributedDataParallel) afterwards;
4. when resuming, the core restores the module and optimizers, then ``amp.load_state_dict`` runs last
   (:meth:`ApexPrecision.torchplug_load_state_dict`), refusing a checkpoint of another opt level.

Each optimizer gets its own loss scale: backward runs through ``amp.scale_loss(loss, optimizer, loss_id=i)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.precision import Precision
from torchplug.utilities import requires_closure

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from torchplug import Trainer

#: The key of this package's state among each rank's plugin states in a checkpoint (docs/checkpoints.md).
STATE_KEY = "torchplug_apex"
OPT_LEVELS = ("O0", "O1", "O2", "O3")

INSTALL_HINT = (
    "NVIDIA apex is not on PyPI (the PyPI package named 'apex' is an unrelated web toolkit), and apex.amp was "
    "removed in apex 25.07; install the last release that has it, 25.04, from source without its C++/CUDA "
    "extensions (apex then uses its Python fallbacks):\n"
    "    git clone --branch 25.04 --depth 1 https://github.com/NVIDIA/apex\n"
    "    pip install --no-build-isolation --no-deps ./apex\n"
    "(on a machine without nvcc, put the cloned folder on PYTHONPATH instead). Or use precision='16-mixed' "
    "(torch.autocast with a GradScaler), which needs nothing more and runs on the CPU too."
)


def find_amp() -> tuple[ModuleType | None, str]:
    """NVIDIA apex's ``amp`` module and ``""``, or ``None`` and why not.

    Found by what it offers (``amp.initialize``), never by distribution name: several unrelated packages install a
    top-level ``apex``.
    """
    try:
        amp = importlib.import_module("apex.amp")
    except ImportError as err:
        return None, f"importing apex.amp failed ({type(err).__name__}: {err})"
    if not callable(getattr(amp, "initialize", None)):
        return None, f"the installed apex.amp ({getattr(amp, '__file__', '?')}) has no amp.initialize"
    return amp, ""


class ApexPrecision(Precision):
    """``apex``: NVIDIA apex's ``amp`` at opt level ``amp_level`` (``"O0"``-``"O3"``, default ``"O2"``).

    O0 is float32 (a baseline), O1 patches torch functions to cast per operation, O2 casts the model to float16
    and keeps float32 master weights in the optimizer, O3 is pure float16. At O2/O3 apex casts the floating-point
    inputs of the module's ``forward``: call ``self(x)`` in ``training_step``, or cast what you give submodules.
    """

    #: Device types apex may run on: apex amp refuses parameters that are not on a CUDA device.
    #: TEST SEAM, for tests only: the CPU tests of this package, which replace ``apex.amp`` with a recording
    #: stand-in (tests/apex_standin), add ``"cpu"`` here with ``monkeypatch``. Nothing else changes it.
    supported_device_types: ClassVar[tuple[str, ...]] = ("cuda",)

    def __init__(self, amp_level: str = "O2") -> None:
        level = str(amp_level).strip()
        if level.upper() not in OPT_LEVELS:
            hint = " (the letter O, not zero)" if level.startswith("0") else ""
            raise MisconfigurationError(
                f"amp_level={amp_level!r}: apex's opt levels are {', '.join(map(repr, OPT_LEVELS))}{hint}; "
                "O2 is the usual choice"
            )
        self.amp_level = level.upper()
        self.amp: ModuleType | None = None
        self._initialized = False

    @classmethod
    def is_available(cls) -> bool:
        return find_amp()[0] is not None

    def __getstate__(self) -> dict[str, Any]:
        # A Trainer given this instance is pickled for spawned processes; a module cannot be, and each process
        # finds apex again in torchplug_configure.
        return {**self.__dict__, "amp": None}

    # ------------------------------------------------------------------------------------------ construction
    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if trainer.run.device_type not in self.supported_device_types:
            raise MisconfigurationError(
                f"precision='apex' (amp_level={self.amp_level!r}) needs a CUDA accelerator: NVIDIA apex amp runs "
                f"only on CUDA, and accelerator={trainer.accelerator_name!r} computes on {trainer.run.device_type!r}. "
                "Use accelerator='gpu', or precision='16-mixed' / 'bf16-mixed', which run on every accelerator "
                "with autocast"
            )
        amp, why = find_amp()
        if amp is None:
            raise MisconfigurationError(
                f"precision='apex' needs NVIDIA apex's amp, but {why}. {INSTALL_HINT}"
            )
        self.amp = amp

    # ------------------------------------------------------------------------------------------ setup
    @hookimpl
    def torchplug_setup_optimizers(
        self, trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        amp = self._amp()
        for optimizer in optimizers:
            if requires_closure(optimizer):
                raise MisconfigurationError(
                    f"precision='apex' cannot step {type(optimizer).__name__}: apex amp does not support optimizers "
                    "whose step() takes a closure. Use precision='32-true' or 'bf16-mixed' with it, or an optimizer "
                    "such as SGD, Adam or AdamW"
                )
        # apex keeps its opt level, loss scalers and function patches in module-global state, and its docs allow
        # one amp.initialize per process; a second one breaks in apex's own checks or silently mixes levels.
        done = getattr(amp, "_torchplug_opt_level", None)
        if done is not None:
            raise MisconfigurationError(
                f"precision='apex': amp.initialize already ran in this process (opt level {done}), and NVIDIA apex "
                "supports one call per process. Run each fit with apex in its own process (a new script run or "
                "strategy='ddp_spawn'), or use precision='16-mixed'"
            )
        module, optimizers = amp.initialize(
            module,
            list(optimizers),
            opt_level=self.amp_level,
            num_losses=max(1, len(optimizers)),
            verbosity=1 if trainer.is_global_zero else 0,
        )
        amp._torchplug_opt_level = self.amp_level
        self._initialized = True
        return module, list(optimizers)

    # ------------------------------------------------------------------------------------------ step
    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        if not self._initialized:  # no optimizers were set up (not fit): nothing to scale for
            return ops
        backward = ops.backward

        def scaled_backward(loss: torch.Tensor, optimizer: Optimizer | None) -> None:
            optimizers = trainer.optimizers
            if optimizer is None:
                # manual_backward(loss) without an optimizer: every optimizer's gradients, the first loss scale
                target: Any = optimizers[0] if len(optimizers) == 1 else list(optimizers)
                loss_id = 0
            else:
                target = optimizer
                loss_id = next((i for i, opt in enumerate(optimizers) if opt is optimizer), 0)
            with self._amp().scale_loss(loss, target, loss_id=loss_id) as scaled_loss:
                backward(scaled_loss, optimizer)

        def clip_master_gradients(optimizer: Optimizer, value: float, algorithm: str) -> None:
            # At O2 the optimizer steps float32 master copies; the model's float16 .grad stay scaled.
            params = [p for p in self._amp().master_params(optimizer) if p.grad is not None]
            if algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, value)
            else:
                torch.nn.utils.clip_grad_norm_(params, value)

        ops.backward, ops.clip_gradients, ops.optimizer_step = scaled_backward, clip_master_gradients, _apex_step
        return ops

    # ------------------------------------------------------------------------------------------ checkpoints
    @hookimpl
    def torchplug_state_dict(self, trainer: Trainer) -> dict[str, Any] | None:
        if not self._initialized:
            return None
        return {STATE_KEY: {"opt_level": self.amp_level, "amp": dict(self._amp().state_dict())}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer: Trainer, states: Mapping[str, Any]) -> None:
        state = states.get(STATE_KEY)
        if state is None:  # a checkpoint of another precision: apex starts from its initial loss scales
            return
        if state["opt_level"] != self.amp_level:
            raise MisconfigurationError(
                f"amp_level={self.amp_level!r}: the checkpoint was trained with apex at opt level "
                f"{state['opt_level']!r}, whose weights, optimizer state and loss scales apex cannot carry to "
                f"{self.amp_level!r}. Resume with amp_level={state['opt_level']!r}"
            )
        if self._initialized:
            self._amp().load_state_dict(state["amp"])

    def _amp(self) -> ModuleType:
        """apex.amp, found again where this instance was unpickled (a spawned process)."""
        if self.amp is None:  # an instance used without torchplug_configure (e.g. registered by hand)
            amp, why = find_amp()
            if amp is None:
                raise MisconfigurationError(
                    f"precision='apex' needs NVIDIA apex's amp, but {why}. {INSTALL_HINT}"
                )
            self.amp = amp
        return self.amp



def _apex_step(optimizer: Optimizer, closure: Callable[[], Any], **kwargs: Any) -> bool:
    closure()  # apex's step() refuses a closure
    # When scale_loss finds inf/NaN it lowers the scale and replaces optimizer.step by a one-shot skip, marking
    # _amp_stash.already_patched (apex/amp/handle.py, 25.04): that step is not taken.
    stash = getattr(optimizer, "_amp_stash", None)
    skipped = bool(getattr(stash, "already_patched", False))
    optimizer.step(**kwargs)
    return not skipped
