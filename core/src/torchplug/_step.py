"""The per-batch operations of a run: bound once at setup, called directly by the loop (no hook per batch)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import optimizer as _torch_optimizer

from torchplug.utilities import batch_mover

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from torchplug.trainer import Trainer


@dataclass(eq=False)
class StepOps:
    """What the loop does to each batch, as plain callables; the answer of ``torchplug_step_ops``.

    Backends change a run's operations by replacing fields, usually with a function that calls the one it
    replaces (see :func:`torchplug.hookspecs.torchplug_step_ops`). ``stage`` is ``"train"``, ``"validation"``,
    ``"test"`` or ``"predict"``.

    * ``to_device(batch)``: the batch on the root device, as the step sees it (the accelerator copies
      non-blocking; ``dp`` leaves it on the host to scatter it; ``*-true`` precisions cast it).
    * ``forward(stage, args)``: the user's ``<stage>_step(*args)`` through the strategy's wrapper; precision
      plugins run it inside ``torch.autocast``; ``dp`` combines the per-GPU outputs.
    * ``backward(loss, optimizer)``: backpropagate one micro-batch's loss (AMP scales it first). ``optimizer``
      is the one being stepped, ``None`` outside an optimizer step.
    * ``no_sync()``: a context for micro-batches that do not end an accumulation window, in which gradients are
      not synchronised (DDP's ``no_sync``).
    * ``prepare_gradients(optimizer)``: make the gradients final before clipping and ``on_before_optimizer_step``:
      reduced across replicas when the strategy does not do it in backward (XLA), back at their true scale (AMP).
    * ``clip_gradients(optimizer, value, algorithm)``: clip by ``"norm"`` or ``"value"``.
    * ``optimizer_step(optimizer, closure, **kwargs)``: step; ``closure`` computes the loss and prepares the
      gradients and must run exactly once (or as often as the optimizer needs, LBFGS). ``kwargs`` are what the user
      passed to ``optimizer.step(...)`` besides the closure; they go to the optimizer's ``step``. Returns whether
      the step was taken (``False`` when AMP skipped it for inf/NaN gradients; LR schedulers then do not advance).
    * ``on_batch_end(stage, batch_idx)``: the batch is done (after the optimizer step and the LR schedulers),
      before the batch-end callbacks and before logged values are read; XLA cuts its graph here.
    """

    to_device: Callable[[Any], Any]
    forward: Callable[[str, tuple[Any, ...]], Any]
    backward: Callable[[torch.Tensor, Any], None]
    no_sync: Callable[[], AbstractContextManager[Any]]
    prepare_gradients: Callable[[Any], None]
    clip_gradients: Callable[[Any, float, str], None]
    optimizer_step: Callable[..., bool]
    on_batch_end: Callable[[str, int], None]

    def traced(self, report: Callable[[str], None]) -> StepOps:
        """A copy whose every operation first reports its name and the function that implements it."""

        def trace(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
            where = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"

            @functools.wraps(function)
            def traced_operation(*args: Any, **kwargs: Any) -> Any:
                report(f"step.{name} -> {where}")
                return function(*args, **kwargs)

            return traced_operation

        return StepOps(**{f.name: trace(f.name, getattr(self, f.name)) for f in fields(self)})


def default_step_ops(trainer: Trainer, wrapped: Any) -> StepOps:
    """One process, one device, full precision: the operations every backend starts from."""
    module = trainer.lightning_module
    device = trainer.root_device
    if _is_bare_step_module(wrapped):
        steps = _step_methods(module)  # nothing wraps the step: call the user's methods directly

        def forward(stage: str, args: tuple[Any, ...]) -> Any:
            return steps[stage](*args)

    else:

        def forward(stage: str, args: tuple[Any, ...]) -> Any:
            return wrapped(stage, *args)

    if _overrides_backward(module):

        def backward(loss: torch.Tensor, optimizer: Any) -> None:
            module.backward(loss)

    else:  # the default Module.backward hook, called as such

        def backward(loss: torch.Tensor, optimizer: Any) -> None:
            loss.backward()

    return StepOps(
        to_device=batch_mover(device),
        forward=forward,
        backward=backward,
        no_sync=nullcontext,
        prepare_gradients=_nothing,
        clip_gradients=clip_gradients,
        optimizer_step=optimizer_step,
        on_batch_end=_nothing,
    )


def _nothing(*args: Any) -> None:
    return None


def clip_gradients(optimizer: Optimizer, value: float, algorithm: str) -> None:
    """Clip the gradients of ``optimizer``'s parameters by norm or by value (torch's own functions)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)


def optimizer_step(optimizer: Optimizer, closure: Callable[[], Any], **kwargs: Any) -> bool:
    """``optimizer.step(closure=closure, **kwargs)``: the optimizer runs the closure (LBFGS several times; SAM
    between its two steps), as in Lightning.

    For torch's own first-order optimizers, whose ``step`` begins by calling the closure once with gradients
    enabled, the closure is called here and then ``step()``: the same order of work without entering a grad-mode
    context per step. Only where nothing could tell the difference: the optimizer's exact class is one of those,
    its ``step`` is not patched on the instance (apex) nor on the class (``mock.patch("torch.optim.SGD.step")``: the
    class's is torch's, which torch marks ``hooked``), no step pre-hook is registered (they run before the closure
    in ``step``) and no other argument is passed.
    """
    cls = type(optimizer)
    if not kwargs and cls in _CLOSURE_FIRST and getattr(cls.step, "hooked", None) is True:
        state = optimizer.__dict__
        hooks = state.get("_optimizer_step_pre_hooks")
        # not patched on the instance (apex's amp does), no step pre-hook (they run before the closure in step)
        if "step" not in state and hooks is not None and not hooks and not _GLOBAL_PRE_HOOKS:
            closure()
            optimizer.step()
            return True
    optimizer.step(closure=closure, **kwargs)
    return True


def _torch_closure_first_optimizers() -> frozenset[type]:
    """torch.optim classes whose ``step(closure)`` starts with ``with torch.enable_grad(): loss = closure()``."""
    names = ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop",
             "SparseAdam", "Adafactor")  # fmt: skip
    return frozenset(cls for cls in (getattr(torch.optim, name, None) for name in names) if isinstance(cls, type))


_CLOSURE_FIRST = _torch_closure_first_optimizers()
# torch's registry of global step pre-hooks (register_optimizer_step_pre_hook adds to this dict, never rebinds it);
# where a torch build lacks it, closure-first is never used
_GLOBAL_PRE_HOOKS: Any = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
if _GLOBAL_PRE_HOOKS is None:
    _CLOSURE_FIRST = frozenset()


def _overrides_backward(module: Any) -> bool:
    from torchplug.module import Module

    if not isinstance(module, Module):
        return False
    return "backward" in vars(module) or type(module).backward is not Module.backward


def _is_bare_step_module(wrapped: Any) -> bool:
    """True when no strategy wrapped the step module and nothing hooks its forward (FSDP registers hooks)."""
    from torchplug.strategies._step_module import StepModule

    return type(wrapped) is StepModule and not wrapped._forward_pre_hooks and not wrapped._forward_hooks


def _step_methods(module: Any) -> dict[str, Callable[..., Any]]:
    from torchplug.strategies._step_module import STEP_METHODS

    return {stage: getattr(module, method) for stage, method in STEP_METHODS.items()}


__all__ = ["StepOps", "clip_gradients", "default_step_ops", "optimizer_step"]
