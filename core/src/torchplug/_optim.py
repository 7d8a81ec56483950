"""Optimizers of a run: what ``configure_optimizers`` returned, the handles the module steps, the schedulers."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from torchplug._errors import ConflictError, MisconfigurationError

if TYPE_CHECKING:
    from torchplug._loop import Loop
    from torchplug.module import Module


@dataclass
class LRSchedulerConfig:
    """One LR scheduler and when it steps (Lightning's ``lr_scheduler`` dict keys)."""

    scheduler: Any
    name: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    monitor: str | None = None
    strict: bool = True


_SCHEDULER_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau"}
_FORMS = (
    "return one of: an optimizer; a list of them; ([optimizers], [schedulers]); "
    '{"optimizer": optimizer, "lr_scheduler": scheduler or {"scheduler": ..., "interval": ..., "monitor": ...}, '
    '"monitor": metric}; a list of such dicts; or None to train without an optimizer'
)


def configure_optimizers(model: Module) -> tuple[list[torch.optim.Optimizer], list[LRSchedulerConfig]]:
    """Call ``configure_optimizers`` and read every form Lightning accepts."""
    returned = model.configure_optimizers()
    name = f"{type(model).__name__}.configure_optimizers()"
    if returned is None:
        warnings.warn(
            f"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer ({name}: "
            "training_step and backward run, no parameter changes)",
            UserWarning,
            stacklevel=4,
        )
        return [], []
    schedulers, monitor = [], None
    if isinstance(returned, torch.optim.Optimizer):
        optimizers = [returned]
    elif (isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[0], list)
          and all(isinstance(o, torch.optim.Optimizer) for o in returned[0])):  # fmt: skip
        optimizers = list(returned[0])
        schedulers = list(returned[1]) if isinstance(returned[1], (list, tuple)) else [returned[1]]
    elif isinstance(returned, dict):
        _check_optimizer_dict(returned, name)
        optimizers, monitor = [returned["optimizer"]], returned.get("monitor")
        schedulers = [returned["lr_scheduler"]] if returned.get("lr_scheduler") is not None else []
    elif isinstance(returned, (list, tuple)) and returned and all(isinstance(d, dict) for d in returned):
        for item in returned:
            _check_optimizer_dict(item, name)
        optimizers = [d["optimizer"] for d in returned]
        schedulers = [d["lr_scheduler"] for d in returned if d.get("lr_scheduler") is not None]
    elif isinstance(returned, (list, tuple)) and all(isinstance(o, torch.optim.Optimizer) for o in returned):
        optimizers = list(returned)
    else:
        raise MisconfigurationError(f"Unknown configuration for model optimizers: {name} returned {returned!r}; "
                                    f"{_FORMS}")  # fmt: skip
    configs = [_scheduler_config(item, monitor, name, model.automatic_optimization) for item in schedulers]
    for config in configs:
        _check_scheduler(model, config.scheduler, name)
    owned = {id(o) for o in optimizers}
    if any(id(getattr(c.scheduler, "optimizer", None)) not in owned for c in configs
           if hasattr(c.scheduler, "optimizer")):  # fmt: skip
        raise MisconfigurationError(
            f"Some schedulers are attached with an optimizer that wasn't returned from `configure_optimizers` "
            f"({name}): return every optimizer a scheduler steps"
        )
    return optimizers, configs


def _check_scheduler(model: Module, scheduler: Any, name: str) -> None:
    """A scheduler is saved in checkpoints (``state_dict``/``load_state_dict``), and in automatic optimization the
    loop steps it as torch's schedulers step, unless the module's ``lr_scheduler_step`` says how."""
    kind = type(scheduler).__name__
    if not all(callable(getattr(scheduler, name, None)) for name in ("state_dict", "load_state_dict")):
        raise TypeError(
            f"The provided lr scheduler `{kind}` is invalid ({name}): it should have `state_dict` and "
            "`load_state_dict` methods defined, so that checkpoints can save and restore it"
        )
    from torchplug.module import Module

    schedulers = torch.optim.lr_scheduler
    torch_api = isinstance(scheduler, (schedulers.LRScheduler, schedulers.ReduceLROnPlateau))
    own_step = type(model).lr_scheduler_step is not Module.lr_scheduler_step
    if model.automatic_optimization and not torch_api and not own_step:
        raise MisconfigurationError(
            f"The provided lr scheduler `{kind}` doesn't follow PyTorch's LRScheduler API ({name}). You should "
            "override the `LightningModule.lr_scheduler_step` hook with your own logic if you are using a custom LR "
            "scheduler (or step it yourself in manual optimization)."
        )


def _check_optimizer_dict(item: dict[str, Any], name: str) -> None:
    if not isinstance(item.get("optimizer"), torch.optim.Optimizer):
        raise MisconfigurationError(
            f"Unknown configuration for model optimizers: {name} returned a dict without an \"optimizer\" key "
            f"holding a torch.optim.Optimizer ({item!r}); {_FORMS}"
        )
    extra = set(item) - {"optimizer", "lr_scheduler", "monitor"}
    if extra:
        warnings.warn(f"Found unsupported keys in the optimizer configuration: {extra}", RuntimeWarning, stacklevel=5)


def _scheduler_config(item: Any, monitor: str | None, name: str, automatic: bool) -> LRSchedulerConfig:
    if not isinstance(item, dict):
        plateau = isinstance(item, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau and automatic and monitor is None:
            raise MisconfigurationError(
                f"`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used ({name}). "
                'For example: {"optimizer": optimizer, "lr_scheduler": scheduler, "monitor": "metric_to_track"}'
            )
        return LRSchedulerConfig(scheduler=item, reduce_on_plateau=plateau, monitor=monitor if automatic else None)
    if "scheduler" not in item:
        raise MisconfigurationError(
            f'The lr scheduler dict must have the key "scheduler" with its item being an lr scheduler ({name} '
            f"returned {item!r})"
        )
    config = dict(item)
    if not automatic:
        ignored = [k for k in config if k in ("reduce_on_plateau", "monitor", "strict")]
        if ignored:
            warnings.warn(
                f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored. You need to call "
                "`lr_scheduler.step()` manually in manual optimization.",
                RuntimeWarning,
                stacklevel=5,
            )
        config = {k: v for k, v in config.items() if k not in ignored}
    unknown = set(config) - _SCHEDULER_KEYS
    if unknown:
        warnings.warn(
            f"Found unsupported keys in the lr scheduler dict: {unknown}. HINT: remove them from the output of "
            f"`configure_optimizers` ({name})",
            RuntimeWarning,
            stacklevel=5,
        )
    config = {k: v for k, v in config.items() if k in _SCHEDULER_KEYS}
    if config.get("interval", "epoch") not in ("step", "epoch"):
        raise MisconfigurationError(
            f'The "interval" key in lr scheduler dict must be "step" or "epoch" but is "{config["interval"]}" ({name})'
        )
    plateau = isinstance(config["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    config.setdefault("reduce_on_plateau", plateau)
    if automatic and config["reduce_on_plateau"]:
        config.setdefault("monitor", monitor)
        if config["monitor"] is None:
            raise MisconfigurationError(
                "The lr scheduler dict must include a monitor when a `ReduceLROnPlateau` scheduler is used "
                f'({name}). For example: {{"optimizer": optimizer, "lr_scheduler": {{"scheduler": scheduler, '
                '"monitor": "your_loss"}}'
            )
    return LRSchedulerConfig(**config)


def repoint_schedulers(configs: list[LRSchedulerConfig], before: list[Any], after: list[Any]) -> None:
    """A precision plugin replaced optimizers (apex): schedulers step the replacements."""
    for old, new in zip(before, after):
        if new is not old:
            for config in configs:
                if getattr(config.scheduler, "optimizer", None) is old:
                    config.scheduler.optimizer = new


def step_schedulers(loop: Loop, interval: str, plateau: bool) -> None:
    """Step the schedulers of ``interval`` that are due, through the module's ``lr_scheduler_step``.

    Lightning's times: other schedulers right after the optimizer step (``"epoch"`` ones after the epoch's last batch,
    before ``on_train_batch_end``); ``ReduceLROnPlateau`` after the metrics it monitors were logged (``"step"``: after
    the batch's validation; ``"epoch"``: after the epoch-end hooks and the callbacks that monitor metrics).
    """
    trainer, module = loop.trainer, loop.module
    for config in trainer.lr_scheduler_configs:
        if config.interval != interval or config.reduce_on_plateau != plateau:
            continue
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        if count % config.frequency:
            continue
        metric = None
        if config.monitor is not None:
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                available = sorted(trainer.callback_metrics) or "none"
                if config.strict:
                    raise MisconfigurationError(
                        f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. Available "
                        f"metrics are: {available}. Condition can be set using `monitor` key in lr scheduler dict "
                        "(log it with self.log), or set 'strict': False"
                    )
                warnings.warn(
                    f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available but strict is "
                    f"set to `False`. Skipping learning rate update (available: {available}).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
        previous, loop.current_hook = loop.current_hook, "lr_scheduler_step"  # self.log is refused in it
        try:
            module.lr_scheduler_step(config.scheduler, metric)
        finally:
            loop.current_hook = previous


_HANDLE_CLASSES: dict[type, type] = {}


class LightningOptimizer:
    """What ``self.optimizers()`` returns and ``optimizer_step`` receives: the optimizer, whose ``step`` runs the
    run's step operations (precision, strategy) around the real one.

    As in Lightning, an instance is also an instance of the optimizer's class (``isinstance(opt, torch.optim.SGD)``)
    and prints as ``Lightning<repr of the optimizer>``; ``param_groups``, ``state`` and every other attribute are the
    wrapped optimizer's own. ``step(closure=None, **kwargs)`` always passes a closure to ``optimizer.step`` (SAM,
    LBFGS need it) and forwards the keyword arguments.
    """

    def __new__(cls, optimizer: torch.optim.Optimizer, loop: Loop | None = None) -> LightningOptimizer:
        if cls is LightningOptimizer:
            kind = type(optimizer)
            cls = _HANDLE_CLASSES.get(kind) or _HANDLE_CLASSES.setdefault(
                kind, type(f"Lightning{kind.__name__}", (LightningOptimizer, kind), {"__module__": __name__})
            )
        return object.__new__(cls)

    def __init__(self, optimizer: torch.optim.Optimizer, loop: Loop | None = None) -> None:
        vars(self).update(optimizer=optimizer, _loop=loop, _closure=None, _pending=False, _result=None)

    # The optimizer's own state, never a copy: a checkpoint restored after the handle was made is seen through it.
    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, value: setattr(self.optimizer, "param_groups", value))  # fmt: skip
    state = property(lambda self: self.optimizer.state, lambda self, value: setattr(self.optimizer, "state", value))
    defaults = property(lambda self: self.optimizer.defaults,
                        lambda self, value: setattr(self.optimizer, "defaults", value))  # fmt: skip

    def step(self, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if closure is not None and not callable(closure):
            raise MisconfigurationError(f"optimizer.step(closure={closure!r}): the closure should be callable")
        loop = self._loop
        if loop is None:  # made outside a run: the optimizer's own step, with a closure as in a run
            return self.optimizer.step(closure=closure if closure is not None else _no_loss, **kwargs)
        state = self.__dict__  # (not through __setattr__, which forwards names it does not know to the optimizer)
        state["_closure"], state["_pending"], state["_result"] = closure, True, None
        loop.step_taken = loop.ops.optimizer_step(self.optimizer, self._after_closure, **kwargs)
        if self._pending and loop.module.automatic_optimization:  # (a user's own step may not use its closure)
            step = loop.ops.optimizer_step
            raise ConflictError(
                "The closure hasn't been executed: the optimizer step operation "
                f"{getattr(step, '__module__', '?')}.{getattr(step, '__qualname__', step)} (or the optimizer's step) "
                "returned without calling its closure, so the batch was not trained; a step operation must call the "
                "closure it is given (StepOps.optimizer_step)"
            )
        if not loop.module.automatic_optimization:
            loop.trainer.global_step += 1  # manual optimization counts optimizer steps, as in Lightning
        return self._result

    def _after_closure(self) -> Any:
        """The user's closure (forward and backward), then gradients made final, the hooks and clipping.

        Optimizers such as LBFGS call it several times per step; each call runs all of it again. The closure runs
        with gradients enabled even when the optimizer's ``step`` disabled them.
        """
        state = self.__dict__
        state["_pending"] = False
        closure = state["_closure"]
        if closure is None:
            loss = None
        elif torch.is_grad_enabled():
            loss = closure()
        else:  # an optimizer whose step disabled gradients (Hugging Face's AdamW)
            with torch.enable_grad():
                loss = closure()
        state["_result"] = loss
        # between the closure and the step: final gradients, on_before_optimizer_step, clipping
        loop, optimizer = state["_loop"], state["optimizer"]
        if loop.prepare_gradients is not None:
            loop.prepare_gradients(optimizer)
        if loop.pre_step_hooks:
            loop.call("on_before_optimizer_step", optimizer)
        if loop.clip and loop.module.automatic_optimization:
            trainer = loop.trainer
            loop.module.configure_gradient_clipping(optimizer, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Without arguments where possible: optimizer wrappers (apex O2) patch zero_grad with no set_to_none.
        self.optimizer.zero_grad() if set_to_none else self.optimizer.zero_grad(set_to_none=False)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    @contextmanager
    def toggle_model(self, sync_grad: bool = True) -> Iterator[None]:
        """Only this optimizer's parameters require grad inside the block; with ``sync_grad=False`` gradients are
        not synchronised across processes (accumulating micro-batches)."""
        loop = self._loop
        module = loop.module if loop is not None else None
        if module is not None:
            module.toggle_optimizer(self)
        try:
            with loop.ops.no_sync() if (loop is not None and not sync_grad) else _nothing():
                yield
        finally:
            if module is not None:
                module.untoggle_optimizer(self)

    def __getattr__(self, name: str) -> Any:
        optimizer = vars(self).get("optimizer")
        if optimizer is None:
            raise AttributeError(name)
        return getattr(optimizer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in vars(self) or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    def __repr__(self) -> str:
        return "Lightning" + repr(self.optimizer)

    __str__ = __repr__


OptimizerHandle = LightningOptimizer  # torchplug's earlier name


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _no_loss() -> None:
    return None


def loss_of(output: Any, loop: Loop) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned (a tensor, a mapping with ``"loss"``, or None: skip the batch)."""
    if isinstance(output, torch.Tensor):
        return output
    if output is None:
        if not loop.warned_none_loss:
            loop.warned_none_loss = True
            warnings.warn(
                "`training_step` returned `None`. If this was on purpose, ignore this warning... (the batch is "
                "skipped: no backward, the optimizer still steps)",
                UserWarning,
                stacklevel=2,
            )
        return None
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise MisconfigurationError(
                "In automatic_optimization, when `training_step` returns a dict, the 'loss' key needs to be present "
                f"(got keys {sorted(output)})"
            )
        return output["loss"]
    raise MisconfigurationError(
        "In automatic optimization, `training_step` must return a Tensor, a dict, or None (where the step will be "
        f"skipped); it returned {type(output).__name__}"
    )


def manual_output(output: Any) -> Any:
    """What ``training_step`` returned with manual optimization: None, a tensor or a mapping (Lightning's rule)."""
    if output is not None and not isinstance(output, (torch.Tensor, Mapping)):
        raise MisconfigurationError(
            "In manual optimization, `training_step` must either return a Tensor or have no return (or a dict); "
            f"it returned {type(output).__name__}"
        )
    return output


class NoOptimizer(torch.optim.Optimizer):
    """What automatic optimization steps when ``configure_optimizers`` returned None: ``step`` runs the closure
    (``training_step`` and backward still run, as in Lightning) and changes nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


def takes_optimizer_idx(module: Module) -> bool:
    import inspect

    try:
        return "optimizer_idx" in inspect.signature(module.training_step).parameters
    except (TypeError, ValueError):
        return False


class MultipleOptimizersError(ConflictError):
    """Several optimizers with automatic optimization (a RuntimeError too, as in Lightning)."""

    def __init__(self, module: Module) -> None:
        takes_index = takes_optimizer_idx(module)
        super().__init__(
            "Training with multiple optimizers is only supported with manual optimization. "
            + ("Remove the `optimizer_idx` argument from `training_step`, set " if takes_index else "Set ")
            + "`self.automatic_optimization = False`, then access your optimizers in `training_step` with "
            "`opt1, opt2, ... = self.optimizers()`."
        )
