"""Every hook the training loop calls, and nothing else: this file is the contract between the loop and backends.

A run has one accelerator, one strategy, one precision plugin and at most one cluster environment, each an
ordinary pluggy plugin registered on the trainer's plugin manager (``trainer.plugin_manager``), plus any extra
plugins the user passes in ``Trainer(plugins=[...])``. The core registers a last-resort plugin
(``torchplug._defaults``) answering every ``firstresult`` hook with the single-process, full-precision behaviour,
so a backend implements only the hooks where it differs.

How answers combine is written on each spec and decided here, in the marker, never by the caller:

* ``firstresult``: the first implementation returning something other than ``None`` wins. Implementations run
  in LIFO registration order, so the run's backends (registered after the defaults) come first; among them use
  ``tryfirst``/``trylast`` only where an order is part of the contract.
* ``wrapper`` (``torchplug_forward``, ``torchplug_optimizer_step``): a precision plugin or strategy may wrap the
  call with ``@hookimpl(wrapper=True)``, e.g. to run the step inside ``torch.autocast`` without knowing which
  strategy performs it.
* otherwise every implementation runs and the caller gets the list of results.

"Every rank" means every process of the job; hooks without that note run in each process too, unless they say
"calling process only". ``trainer`` is always the :class:`torchplug.Trainer` running the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from torchplug._types import ClusterInfo, World
    from torchplug.trainer import Trainer

hookspec = pluggy.HookspecMarker("torchplug")


# --------------------------------------------------------------------------------------------------------------
# configuration: in every process, when the Trainer is constructed
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_configure(trainer: Trainer) -> None:
    """Check that this plugin can run with the others selected, and raise if not.

    Called once per ``Trainer`` construction, in every process, after every selected plugin is registered and
    ``trainer.accelerator_name``/``strategy_name``/``precision_name``/``device_ids``/``num_nodes`` are set.
    Every plugin may answer; results are ignored. Raise :class:`torchplug.MisconfigurationError` with a
    message naming the argument, what was given and what would work (apex refuses a non-cuda accelerator here).
    """


@hookspec(firstresult=True)
def torchplug_device_count(trainer: Trainer) -> int | None:
    """How many devices of its kind the accelerator sees on this machine; ``None`` means "any number".

    Called at construction to validate ``devices``, in every process. Answered by the accelerator (the CPU
    answers ``None``: ``devices=N`` there means N processes). Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_default_strategy(trainer: Trainer) -> str | None:
    """The strategy that ``strategy="auto"`` means on this accelerator (TPUs: ``single_xla`` or ``xla``).

    Called at construction, every process, after ``trainer.device_ids`` and ``num_nodes`` are set and before the
    strategy is resolved. Answered by the accelerator; ``None`` keeps the core's choice (``single_device`` for
    one device on one node, else ``ddp``). Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_precision_name(trainer: Trainer, precision: str) -> str | None:
    """The precision to load in place of the one the user named, on this accelerator.

    TPUs have no float16 arithmetic, so the XLA accelerator answers ``"bf16-mixed"`` for ``"16-mixed"``/``16``
    (with a notice). Called at construction, every process, before the precision plugin is resolved, only when
    the precision was given by name. Answered by the accelerator; ``None`` keeps the name. Stops at the first
    non-None result.
    """


@hookspec(firstresult=True)
def torchplug_num_processes(trainer: Trainer) -> int | None:
    """How many processes per node this run uses (1 for one process that drives every device, like ``dp``).

    Called at construction, every process. Answered by the strategy; the default is 1. Stops at the first
    non-None result. ``trainer.world_size`` before launch is this times ``num_nodes``.
    """


# --------------------------------------------------------------------------------------------------------------
# launch: calling process only
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_launch(trainer: Trainer, function: Callable[[], Any]) -> Any:
    """Run ``function`` (a whole ``fit``/``validate``/``test``/``predict``) in every process of the job.

    Called by ``fit``/``validate``/``test``/``predict`` in the calling process. Answered by the strategy: a
    multi-process strategy starts the other processes (or finds them already started by torchrun/SLURM) and runs
    ``function`` in each; it returns what ``function`` returned in this process, wrapped in a one-element tuple
    so that a ``None`` result is still an answer. The default calls ``function()`` here. Stops at the first
    non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# setup: every rank, at the start of fit/validate/test/predict, in this order
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_setup_environment(trainer: Trainer) -> None:
    """Prepare this process: join the process group, pick and set the device, seed per-rank state.

    Called on every rank before anything touches a device. Every plugin may answer; results are ignored. The
    strategy should initialise the process group here; an accelerator that needs the rank should read it from
    :func:`torchplug_world` rather than assume the order of answers.
    """


@hookspec(firstresult=True)
def torchplug_cluster_info(trainer: Trainer) -> ClusterInfo | None:
    """Where this process sits in a job made by someone else (torchrun, SLURM) or by our own launcher.

    Called by multi-process strategies on every rank, before and after launch, instead of reading scheduler
    variables themselves. Answered by the cluster environment plugin, if one is selected; ``None`` when none is.
    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_world(trainer: Trainer) -> World | None:
    """Ranks and world size of this process; the default is a world of one.

    Called on every rank after :func:`torchplug_setup_environment` and cached as ``trainer.global_rank`` etc.
    Answered by the strategy. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_root_device(trainer: Trainer) -> torch.device | None:
    """The device this process computes on (``trainer.root_device``, ``module.device``).

    Called on every rank after :func:`torchplug_world`. Answered by the accelerator, which may use
    ``trainer.local_rank`` and ``trainer.device_ids``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_autocast_device_type(trainer: Trainer) -> str | None:
    """The ``device_type`` to give ``torch.autocast`` for this accelerator (``"cuda"``, ``"cpu"``, ``"xla"``).

    Asked by precision plugins, every rank. Answered by the accelerator; the default is
    ``trainer.root_device.type``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_convert_module(trainer: Trainer, module: nn.Module) -> nn.Module | None:
    """Change the user's module for this precision (``bf16-true`` casts parameters and buffers).

    Called once per run on every rank after the module is on ``trainer.root_device``. Answered by the precision
    plugin, which changes the module in place and returns it (a different object is refused: the user's module is
    what the loop, checkpoints and ``self`` in the steps refer to). Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_setup_optimizers(
    trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
) -> tuple[nn.Module, list[Optimizer]] | None:
    """Let a precision plugin take over the module and its optimizers (apex's ``amp.initialize``).

    Called once per run on every rank, after ``configure_optimizers`` and before the module is wrapped by the
    strategy and before any checkpoint is restored. Return ``(module, optimizers)``: the same module, changed in
    place, and the optimizers to use (LR schedulers are re-pointed at them). Answered by the precision plugin. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_wrap_module(trainer: Trainer, module: nn.Module) -> nn.Module | None:
    """Wrap the module for this strategy (DistributedDataParallel, DataParallel).

    Called once per run on every rank after :func:`torchplug_setup_optimizers`. ``module`` is a
    :class:`torchplug.StepModule`, whose ``forward(stage, *args)`` runs the user's ``<stage>_step``, so a
    wrapper that intercepts ``forward`` sees every step. Answered by the strategy; return the wrapped module;
    the default returns ``module``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_setup_dataloader(trainer: Trainer, dataloader: DataLoader, stage: str) -> DataLoader | None:
    """Adapt one dataloader for this strategy (a ``DistributedSampler`` for each process).

    Called on every rank for each dataloader of the stage (``"fit"``, ``"validate"``, ``"test"``,
    ``"predict"``; the validation loaders of ``fit`` are passed with ``"validate"``). Answered by the strategy;
    the default returns the loader unchanged. Stops at the first non-None result.
    """


@hookspec
def torchplug_on_train_epoch_start(trainer: Trainer, epoch: int) -> None:
    """A training epoch begins (samplers' ``set_epoch`` goes here). Every rank; every plugin may answer."""


# --------------------------------------------------------------------------------------------------------------
# step: every rank, for every batch
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_batch_to_device(trainer: Trainer, batch: Any, device: torch.device) -> Any:
    """Move one batch (nested tuples, lists, dicts, dataclasses of tensors) to ``device``.

    Called for every batch, every rank, before the step. Answered by the accelerator (to copy non-blocking from
    pinned memory) or by a strategy that scatters batches itself (``dp`` returns the batch unchanged); the
    default moves every tensor with ``.to(device)``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_convert_batch(trainer: Trainer, batch: Any) -> Any:
    """Change one batch, already on its device, for this precision (``*-true`` casts floating-point tensors).

    Called for every batch, every rank, after :func:`torchplug_batch_to_device`. Answered by the precision
    plugin; the default returns ``batch`` (mixed precision leaves inputs alone). Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_forward(trainer: Trainer, stage: str, args: tuple[Any, ...]) -> Any:
    """Run the user's ``<stage>_step(*args)`` (stage is ``train``, ``validation``, ``test`` or ``predict``).

    Called for every batch, every rank. Only the core answers: it calls the module the strategy returned from
    :func:`torchplug_wrap_module` (``wrapped(stage, *args)``), so DistributedDataParallel or DataParallel sees
    the forward. Precision plugins and strategies wrap it (``@hookimpl(wrapper=True)``), e.g. to run it inside
    ``torch.autocast``. ``None`` (the user skipped the batch) is a valid result.
    """


@hookspec(firstresult=True)
def torchplug_step_output(trainer: Trainer, stage: str, output: Any) -> Any:
    """Combine the per-device outputs of one in-process step into one (``dp`` averages per-GPU losses).

    Called after :func:`torchplug_forward` for every batch, every rank. Answered by a strategy that runs
    several replicas in one process; the default returns ``output``. Stops at the first non-None result.
    """


@hookspec
def torchplug_on_batch_end(trainer: Trainer, stage: str, batch_idx: int) -> None:
    """The core finished one batch of ``stage`` (``train``, ``validation``, ``test``, ``predict``).

    Called for every batch, every rank: for ``train`` after forward, backward and, when the batch ends an
    accumulation window, the optimizer step, the LR schedulers and ``zero_grad``; for the other stages after
    :func:`torchplug_step_output`. Always before the ``on_<stage>_batch_end`` callbacks and before the logging
    interval reads logged values. A lazy-tensor accelerator (XLA) cuts its graph here, once the gradients are gone
    and before anything reads the step's results. Every plugin may answer; results are ignored.
    """


@hookspec(firstresult=True)
def torchplug_no_sync(trainer: Trainer) -> AbstractContextManager[None] | None:
    """A context in which forward and backward skip gradient synchronisation (accumulation micro-batches).

    Called for each micro-batch that does not end an accumulation window, every rank. Answered by a strategy
    that synchronises in backward (DDP's ``no_sync``); ``None`` (the default) means no such context. Stops at
    the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_backward(trainer: Trainer, loss: torch.Tensor, optimizer: Optimizer | None) -> bool | None:
    """Backpropagate ``loss`` (automatic optimization and ``manual_backward``).

    Called once per micro-batch, every rank. Answered by the precision plugin (AMP scales the loss; apex uses
    ``amp.scale_loss``); the default calls ``loss.backward()``. Return ``True`` once done. Stops at the first
    non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# optimizer: every rank, once per optimizer step (after the last micro-batch of an accumulation window)
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_reduce_gradients(trainer: Trainer, optimizer: Optimizer) -> None:
    """Make gradients agree across replicas when the strategy does not do it in backward (XLA).

    Called inside the step closure after backward and before unscaling and clipping, every rank. Every plugin
    may answer; results are ignored.
    """


@hookspec
def torchplug_unscale_gradients(trainer: Trainer, optimizer: Optimizer) -> None:
    """Bring gradients back to their true scale (AMP's ``scaler.unscale_``).

    Called inside the step closure after :func:`torchplug_reduce_gradients`, before gradient clipping and before
    ``on_before_optimizer_step``, every rank. Answered by the precision plugin; results are ignored.
    """


@hookspec(firstresult=True)
def torchplug_clip_gradients(trainer: Trainer, optimizer: Optimizer, clip_val: float, algorithm: str) -> bool | None:
    """Clip gradients of ``optimizer``'s parameters by ``"norm"`` or ``"value"``.

    Called inside the step closure when ``gradient_clip_val`` is set, every rank. Answered by a plugin that
    keeps the true parameters elsewhere (apex clips ``amp.master_params``); the default clips the parameters of
    the optimizer's param groups. Return ``True`` once done. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_optimizer_step(trainer: Trainer, optimizer: Optimizer, closure: Callable[[], Any]) -> bool | None:
    """Step ``optimizer``; ``closure`` runs the last forward/backward, unscaling, hooks and clipping.

    Called once per optimizer step, every rank. The answer says whether the step was taken: ``False`` when it
    was skipped (AMP found inf/NaN gradients), and then no LR scheduler advances. Answered by the precision
    plugin or the strategy (either may also wrap it); the default is ``optimizer.step(closure)`` and ``True``.
    A plugin that cannot call ``closure`` through ``optimizer.step`` must call it itself exactly once. Stops at
    the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# collectives: every rank must make the same calls in the same order
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_all_reduce(trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor | None:
    """Reduce ``tensor`` across processes with ``op`` (``"mean"``, ``"sum"``, ``"max"``, ``"min"``).

    Used by ``self.log(..., sync_dist=True)`` and epoch-end metric aggregation; every rank. Answered by the
    strategy; the default returns ``tensor``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_barrier(trainer: Trainer, name: str) -> bool | None:
    """Wait until every process reaches this point. Every rank; answered by the strategy. Stops at first result."""


@hookspec(firstresult=True)
def torchplug_broadcast(trainer: Trainer, obj: Any, src: int) -> tuple[Any] | None:
    """Send a picklable ``obj`` from global rank ``src`` to every rank.

    Every rank; answered by the strategy; returns ``(obj,)`` so ``None`` can be broadcast. The default returns
    ``(obj,)``. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# checkpoints and metrics
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_state_dict(trainer: Trainer) -> dict[str, Any] | None:
    """This plugin's state for a checkpoint, as ``{key: picklable state}`` (AMP: the scaler's state).

    Called on every rank when a checkpoint is made (rank 0 writes it). Every plugin may answer; the dicts are
    merged into ``checkpoint["plugins"]``, so pick a key that names the plugin.
    """


@hookspec
def torchplug_load_state_dict(trainer: Trainer, states: dict[str, Any]) -> None:
    """Restore this plugin's state from ``checkpoint["plugins"]`` when resuming.

    Called on every rank after the module and optimizers are restored (so last in the order apex needs). Every
    plugin may answer and reads its own key; a plugin may refuse a checkpoint it cannot resume (apex with
    another opt level) by raising :class:`torchplug.MisconfigurationError`.
    """


@hookspec
def torchplug_metrics(trainer: Trainer) -> dict[str, float] | None:
    """Extra metrics to log at the logging interval (``log_gpu_memory``).

    Called on every rank every ``log_every_n_steps`` optimizer steps; only global rank 0 writes them. Every
    plugin may answer; the dicts are merged into the logged metrics.
    """


# --------------------------------------------------------------------------------------------------------------
# teardown
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_teardown(trainer: Trainer) -> None:
    """Release what setup took (process group, device memory). Every rank, after the run, also after an error.

    Every plugin may answer; results are ignored. Must not raise when setup stopped half way.
    """
