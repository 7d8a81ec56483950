"""TEST STAND-IN for ``apex.amp`` (NVIDIA apex 25.04), used only by torchplug-apex's CPU tests; it is not apex.

It records every call in :data:`calls` so tests can check the order torchplug-apex uses, and imitates the parts of
apex's behaviour the plugin relies on, on any device:

* ``initialize`` checks the opt level, refuses an optimizer seen before, gives optimizers an ``_amp_stash`` and
  makes ``num_losses`` loss scalers (dynamic, starting at 2**16, for O1/O2; static 1.0 for O0/O3);
* ``scale_loss`` yields ``loss.float() * scale`` and on exit unscales the gradients of the optimizers given; on
  inf/NaN it halves that loss's scale and replaces ``optimizer.step`` by a one-shot skip, marking
  ``_amp_stash.already_patched`` (as apex/amp/handle.py does);
* ``master_params``, ``state_dict`` (``{"loss_scaler0": {"loss_scale", "unskipped"}}``) and ``load_state_dict``.

It does not cast models (O2/O3) nor patch torch functions (O1): those are apex's own business, and run only in the
real-apex tests on a CUDA machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

#: (name, details) of every call, in order. Tests clear it with :func:`reset`.
calls: list[tuple[str, dict[str, Any]]] = []
loss_scalers: list[_LossScaler] = []
_OPT_LEVELS = ("O0", "O1", "O2", "O3")


class _LossScaler:
    def __init__(self, dynamic: bool) -> None:
        self.dynamic = dynamic
        self.loss_scale = 2.0**16 if dynamic else 1.0
        self.unskipped = 0


class _AmpStash:
    def __init__(self) -> None:
        self.already_patched = False


def reset() -> None:
    calls.clear()
    loss_scalers.clear()


def initialize(models: Any, optimizers: Any = None, enabled: bool = True, opt_level: str = "O1",
               num_losses: int = 1, verbosity: int = 1, **overrides: Any) -> Any:  # fmt: skip
    if opt_level not in _OPT_LEVELS:
        raise RuntimeError(f"Unexpected optimization level {opt_level}. Options are 'O0', 'O1', 'O2', 'O3'.")
    model_list = models if isinstance(models, list) else [models]
    opt_list = [] if optimizers is None else (optimizers if isinstance(optimizers, list) else [optimizers])
    calls.append(("initialize", {
        "models": model_list, "optimizers": list(opt_list), "opt_level": opt_level, "num_losses": num_losses,
        "param_devices": {p.device for m in model_list for p in m.parameters()},
        "verbosity": verbosity,
    }))  # fmt: skip
    for optimizer in opt_list:
        if hasattr(optimizer, "_amp_stash"):
            raise RuntimeError("A given optimizer should only be passed through amp.initialize once.")
        optimizer._amp_stash = _AmpStash()
        _refuse_closures(optimizer)
    loss_scalers[:] = [_LossScaler(dynamic=opt_level in ("O1", "O2")) for _ in range(num_losses)]
    if optimizers is None:
        return models
    return models, optimizers


@contextlib.contextmanager
def scale_loss(loss: torch.Tensor, optimizers: Any, loss_id: int = 0, model: Any = None,
               delay_unscale: bool = False, delay_overflow_check: bool = False) -> Iterator[torch.Tensor]:  # fmt: skip
    if not loss_scalers:
        raise RuntimeError("Invoked 'with amp.scale_loss`, but internal Amp state has not been initialized.")
    opt_list = optimizers if isinstance(optimizers, list) else [optimizers]
    scaler = loss_scalers[loss_id]
    calls.append(
        ("scale_loss", {"optimizers": list(opt_list), "loss_id": loss_id, "scale": scaler.loss_scale})
    )
    yield loss.float() * scaler.loss_scale
    overflow = False
    for optimizer in opt_list:
        for p in _params(optimizer):
            if p.grad is not None:
                overflow |= not bool(torch.isfinite(p.grad).all())
                p.grad.div_(scaler.loss_scale)
    if overflow and scaler.dynamic:
        scaler.loss_scale /= 2.0
        scaler.unskipped = 0
        for optimizer in opt_list:
            if not optimizer._amp_stash.already_patched:
                _patch_skip(optimizer)
    else:
        scaler.unskipped += 1


def _refuse_closures(optimizer: Any) -> None:
    real_step = optimizer.step

    def step(closure: Any = None) -> Any:
        if closure is not None:
            raise RuntimeError("Currently, Amp does not support closure use with optimizers.")
        calls.append(("step", {"optimizer": optimizer}))
        return real_step()

    optimizer.step = step


def _patch_skip(optimizer: Any) -> None:
    real_step = optimizer.step

    def skip_step(closure: Any = None) -> None:
        if closure is not None:
            raise RuntimeError("Currently, Amp does not support closure use with optimizers.")
        calls.append(("skipped_step", {"optimizer": optimizer}))
        optimizer.step = real_step
        optimizer._amp_stash.already_patched = False

    optimizer.step = skip_step
    optimizer._amp_stash.already_patched = True


def master_params(optimizer: Any) -> Iterator[torch.Tensor]:
    return _params(optimizer)


def _params(optimizer: Any) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


def state_dict(destination: Any = None) -> dict[str, Any]:
    calls.append(("state_dict", {}))
    return {
        f"loss_scaler{i}": {"loss_scale": s.loss_scale, "unskipped": s.unskipped}
        for i, s in enumerate(loss_scalers)
    }


def load_state_dict(state: dict[str, Any]) -> None:
    calls.append(("load_state_dict", {"state": state}))
    for scaler, key in zip(loss_scalers, sorted(state), strict=False):
        scaler.loss_scale = state[key]["loss_scale"]
        scaler.unskipped = state[key]["unskipped"]
