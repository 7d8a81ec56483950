"""TEST STAND-IN for ``apex.amp`` (NVIDIA apex 25.04), used only by torchplug-apex's CPU tests; it is not apex.

It records calls in :data:`calls` so tests can check the order torchplug-apex uses, and reproduces, on any device,
what apex does to the model and the optimizers that the plugin (and the core around it) must live with. Written
from reading apex 25.04 (``apex/amp/frontend.py``, ``_initialize.py``, ``_process_optimizer.py``, ``handle.py``,
``scaler.py``, ``_amp_state.py``); no apex code is copied.

What apex does, and so does this stand-in:

* ``initialize`` refuses a model already wrapped by DistributedDataParallel/DataParallel, parameters already in
  float16, an unknown opt level and an optimizer seen before. O0 keeps float32; O2 casts the model to float16
  except affine BatchNorm layers, O3 casts all of it; at O0/O2/O3 the model's ``forward`` casts floating-point
  inputs to the model type and outputs to float32, and ``state_dict()`` returns float32 tensors. It makes
  ``num_losses`` loss scalers: dynamic from 2**16 at O1/O2, static 1.0 at O0/O3.
* O2 keeps float32 **master weights** in the optimizer, created lazily (first ``zero_grad``, backward or
  ``add_param_group``): the optimizer's ``param_groups`` then hold the masters, not the model's float16
  parameters, and apex patches the optimizer:

  - ``zero_grad(self)``, **without a ``set_to_none`` parameter** (``opt.zero_grad(set_to_none=True)`` raises
    ``TypeError: ...new_zero_grad() got an unexpected keyword argument 'set_to_none'``, as with apex): zeroes
    the model's gradients in place and drops the masters';
  - ``step(closure=None)`` refuses a closure, steps the masters, copies them into the model, drops the masters'
    gradients;
  - backward inside ``scale_loss`` leaves the model's float16 gradients scaled and writes unscaled float32
    gradients to the masters (adding to gradients already there, for accumulation).

  Recorded: ``("zero_grad", {"optimizer"})`` and ``("step", {"optimizer"})``.
* Without master weights (O0, O1, O3) the optimizer's own ``zero_grad`` stays; ``step`` is only recorded (closures
  pass through, as apex leaves them). At O1 backward unscales the model's gradients in place, adding gradients
  that were there before; at O0/O3 (static scale 1.0) ``scale_loss`` yields ``loss.float()`` and does nothing.
* ``scale_loss(loss, optimizers, loss_id)`` takes an optimizer or a list of them (anything else fails as it
  does in apex), yields ``loss.float() * scale``, then unscales; with a dynamic scale an inf/NaN gradient halves
  that loss's scale and replaces ``optimizer.step`` by a one-shot skip (``_amp_stash.already_patched``) that
  drops the masters' gradients; 2000 clean steps double the scale.
* ``master_params``, ``state_dict`` (``{"loss_scaler0": {"loss_scale", "unskipped"}}``) and ``load_state_dict``.

It does not patch torch functions (O1's per-operation casts) and accepts CPU tensors: that is apex's business on
a CUDA machine, tested with real apex in tests/test_apex_gpu.py.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: (name, details) of every call, in order. Tests clear it with :func:`reset`.
calls: list[tuple[str, dict[str, Any]]] = []
loss_scalers: list[_LossScaler] = []

#: opt level -> (type the model is cast to, keep BatchNorm in float32, master weights, loss scale)
_LEVELS: dict[str, tuple[torch.dtype | None, bool, bool, Any]] = {
    "O0": (torch.float32, False, False, 1.0),
    "O1": (None, False, False, "dynamic"),
    "O2": (torch.float16, True, True, "dynamic"),
    "O3": (torch.float16, False, False, 1.0),
}
_SCALE_WINDOW = 2000
_MAX_SCALE = 2.0**24
_state: dict[str, Any] = {}


class _LossScaler:
    def __init__(self, loss_scale: Any) -> None:
        self.dynamic = loss_scale == "dynamic"
        self.loss_scale = 2.0**16 if self.dynamic else float(loss_scale)
        self.unskipped = 0

    def update(self, overflow: bool) -> bool:
        """Whether the step must be skipped (apex's ``LossScaler.update_scale``)."""
        skip = overflow and self.dynamic
        if skip:
            self.loss_scale /= 2.0
            self.unskipped = 0
        else:
            self.unskipped += 1
        if self.dynamic and self.unskipped == _SCALE_WINDOW:
            self.loss_scale, self.unskipped = min(_MAX_SCALE, self.loss_scale * 2.0), 0
        return skip


class _AmpStash:
    def __init__(self) -> None:
        self.lazy_init_called = False
        self.already_patched = False
        self.params_have_scaled_gradients = False
        self.model_params: list[torch.Tensor] = []  # float16 parameters that have a master (O2)
        self.masters: list[torch.Tensor] = []  # their float32 masters, in the optimizer's param_groups
        self.others: list[torch.Tensor] = []  # parameters the optimizer steps directly
        self.stashed: list[torch.Tensor | None] = []  # their gradients from before this backward


def reset() -> None:
    calls.clear()
    loss_scalers.clear()
    _state.clear()


def initialize(models: Any, optimizers: Any = None, enabled: bool = True, opt_level: str = "O1",
               num_losses: int = 1, verbosity: int = 1, **overrides: Any) -> Any:  # fmt: skip
    if opt_level not in _LEVELS:
        raise RuntimeError(
            f"Unexpected optimization level {opt_level}. Options are 'O0', 'O1', 'O2', 'O3'.  Note that in `O0`, "
            "`O1`, etc., the prefix O is the letter O, not the number zero."
        )
    model_list = models if isinstance(models, list) else [models]
    if isinstance(optimizers, torch.optim.Optimizer):
        opt_list = [optimizers]
    elif optimizers is None or isinstance(optimizers, list):
        opt_list = list(optimizers or [])
    else:
        raise TypeError("optimizers must be either a single optimizer or a list of optimizers.")
    calls.append(("initialize", {
        "models": model_list, "optimizers": list(opt_list), "opt_level": opt_level, "num_losses": num_losses,
        "param_devices": {p.device for m in model_list for p in m.parameters()},
        "verbosity": verbosity,
    }))  # fmt: skip
    cast, keep_batchnorm_fp32, master_weights, loss_scale = _LEVELS[opt_level]
    for model in model_list:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise RuntimeError(
                f"Incoming model is an instance of {type(model).__name__}. Parallel wrappers should only be "
                "applied to the model(s) AFTER \nthe model(s) have been returned from amp.initialize."
            )
        for name, param in model.named_parameters():
            if param.dtype == torch.float16:
                raise RuntimeError(f"Found param {name} with type {param.type()}, expected a float32 tensor.")
    if cast is not None:
        for model in model_list:
            _cast_model(model, cast, keep_batchnorm_fp32)
        for optimizer in opt_list:  # recast per-parameter state to the new parameter types
            optimizer.load_state_dict(optimizer.state_dict())
    for optimizer in opt_list:
        _process_optimizer(optimizer, master_weights)
    _state["master_weights"], _state["opt_level"] = master_weights, opt_level
    loss_scalers[:] = [_LossScaler(loss_scale) for _ in range(num_losses)]
    if optimizers is None:
        return models
    return models, optimizers


# ------------------------------------------------------------------------------------------------ the model
def _cast_model(model: nn.Module, dtype: torch.dtype, keep_batchnorm_fp32: bool) -> None:
    for module in model.modules():
        if keep_batchnorm_fp32 and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))
    model.forward = _casting_forward(model.forward, dtype)
    for module in model.modules():
        module.register_state_dict_post_hook(_float32_state_dict)


def _casting_forward(forward: Any, dtype: torch.dtype) -> Any:
    def cast_forward(*args: Any, **kwargs: Any) -> Any:
        output = forward(*_cast(args, dtype), **_cast(kwargs, dtype))
        return _cast(output, torch.float32)

    return cast_forward


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _float32_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.dtype == torch.float16:
            state_dict[key] = value.to(torch.float32)


# ------------------------------------------------------------------------------------------------ the optimizers
def _process_optimizer(optimizer: torch.optim.Optimizer, master_weights: bool) -> None:
    if hasattr(optimizer, "_amp_stash"):
        raise RuntimeError("A given optimizer should only be passed through amp.initialize once.")
    stash = optimizer._amp_stash = _AmpStash()
    own_step = optimizer.step

    if master_weights:

        def new_step(self: Any, closure: Any = None) -> Any:
            if closure is not None:
                raise RuntimeError("Currently, Amp does not support closure use with optimizers.")
            calls.append(("step", {"optimizer": self}))
            result = own_step()
            with torch.no_grad():
                for param, master in zip(stash.model_params, stash.masters, strict=True):
                    param.copy_(master)
            for master in stash.masters:
                master.grad = None
            return result

        def new_zero_grad(self):  # apex's signature: no set_to_none
            calls.append(("zero_grad", {"optimizer": self}))
            _lazy_init(self)
            for param in [*stash.model_params, *stash.others]:
                if param.grad is not None:
                    param.grad.detach_()
                    param.grad.zero_()
            for master in stash.masters:
                master.grad = None

        own_add_param_group = optimizer.add_param_group

        def new_add_param_group(self: Any, group: dict[str, Any]) -> None:
            _lazy_init(self)
            params = group["params"]
            group["params"] = [params] if isinstance(params, torch.Tensor) else list(params)
            group["params"] = [_master_of(stash, p) for p in group["params"]]
            own_add_param_group(group)

        optimizer.zero_grad = types.MethodType(new_zero_grad, optimizer)
        optimizer.add_param_group = types.MethodType(new_add_param_group, optimizer)
    else:

        def new_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(("step", {"optimizer": self}))
            return own_step(*args, **kwargs)

    optimizer.step = types.MethodType(new_step, optimizer)


def _lazy_init(optimizer: Any) -> None:
    stash = optimizer._amp_stash
    if stash.lazy_init_called:
        return
    stash.lazy_init_called = True
    for group in optimizer.param_groups:
        group["params"] = [_master_of(stash, p) if _state["master_weights"] else _other(stash, p)
                           for p in group["params"]]  # fmt: skip
    for param, master in zip(stash.model_params, stash.masters, strict=True):
        if param in optimizer.state:
            optimizer.state[master] = optimizer.state.pop(param)
    optimizer.load_state_dict(optimizer.state_dict())  # recast the moved state to float32


def _master_of(stash: _AmpStash, param: torch.Tensor) -> torch.Tensor:
    if param.requires_grad and param.dtype == torch.float16:
        master = param.detach().clone().float().requires_grad_(True)
        stash.model_params.append(param)
        stash.masters.append(master)
        return master
    return _other(stash, param)


def _other(stash: _AmpStash, param: torch.Tensor) -> torch.Tensor:
    stash.others.append(param)
    stash.stashed.append(None)
    return param


def _prepare_backward(optimizer: Any) -> None:
    stash = optimizer._amp_stash
    _lazy_init(optimizer)
    for param in stash.model_params:
        param.grad = None  # apex lets backward write a fresh gradient; the master keeps the sum
    for i, param in enumerate(stash.others):
        stash.stashed[i], param.grad = param.grad, None


def _post_backward(optimizer: Any, scale: float) -> bool:
    """Unscale what backward wrote; whether it had an inf/NaN."""
    stash = optimizer._amp_stash
    overflow = False
    with torch.no_grad():
        for param, master in zip(stash.model_params, stash.masters, strict=True):
            if param.grad is None:
                continue
            overflow |= not bool(torch.isfinite(param.grad).all())
            unscaled = param.grad.float() / scale  # the model's own gradient stays scaled
            master.grad = unscaled if master.grad is None else master.grad + unscaled
        for i, param in enumerate(stash.others):
            stashed, stash.stashed[i] = stash.stashed[i], None
            if param.grad is None:
                param.grad = stashed
                continue
            overflow |= not bool(torch.isfinite(param.grad).all())
            param.grad.div_(scale)
            if stashed is not None:
                param.grad.add_(stashed)
    return overflow


@contextlib.contextmanager
def scale_loss(loss: torch.Tensor, optimizers: Any, loss_id: int = 0, model: Any = None,
               delay_unscale: bool = False, delay_overflow_check: bool = False) -> Iterator[torch.Tensor]:  # fmt: skip
    if not loss_scalers:
        raise RuntimeError("Invoked 'with amp.scale_loss`, but internal Amp state has not been initialized.")
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    if not isinstance(optimizers, list):  # apex iterates what it was given
        raise TypeError(f"'{type(optimizers).__name__}' object is not iterable")
    scaler = loss_scalers[loss_id]
    calls.append(("scale_loss", {"optimizers": list(optimizers), "loss_id": loss_id, "scale": scaler.loss_scale}))
    if not _state["master_weights"] and not scaler.dynamic and scaler.loss_scale == 1.0:
        yield loss.float()
        return
    for optimizer in optimizers:
        _prepare_backward(optimizer)
    yield loss.float() * scaler.loss_scale
    overflow = False
    for optimizer in optimizers:
        overflow |= _post_backward(optimizer, scaler.loss_scale)
    if scaler.update(overflow):
        for optimizer in optimizers:
            if not optimizer._amp_stash.already_patched:
                _patch_skip(optimizer)


def _patch_skip(optimizer: Any) -> None:
    real_step = optimizer.step

    def skip_step(closure: Any = None) -> None:
        if closure is not None:
            raise RuntimeError("Currently, Amp does not support closure use with optimizers.")
        calls.append(("skipped_step", {"optimizer": optimizer}))
        for master in optimizer._amp_stash.masters:
            master.grad = None
        optimizer.step = real_step
        optimizer._amp_stash.already_patched = False

    optimizer.step = skip_step
    optimizer._amp_stash.already_patched = True


def master_params(optimizer: Any) -> Iterator[torch.Tensor]:
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
    unexpected = [key for key in state if "loss_scaler" not in key]
    if unexpected:
        raise RuntimeError(f"Error(s) in loading state_dict. Unexpected key(s) in state_dict: {unexpected}. ")
    for scaler, key in zip(loss_scalers, state):  # in the order saved, as apex reads it
        scaler.loss_scale = state[key]["loss_scale"]
        scaler.unskipped = state[key]["unskipped"]
