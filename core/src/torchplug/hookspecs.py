"""Every hook the trainer calls, and nothing else: this file is the contract between the core and its backends.

A run has one accelerator, one strategy, one precision plugin and at most one cluster environment, each an
ordinary pluggy plugin registered on the trainer's plugin manager (``trainer.plugin_manager``), plus any extra
plugins the user passes in ``Trainer(plugins=[...])``. They are registered in that order: accelerator, strategy,
cluster environment, precision, extras. The core registers a last-resort plugin first (``torchplug._defaults``)
answering every ``firstresult`` hook with the single-process, full-precision behaviour, so a backend implements
only the hooks where it differs.

How answers combine is written on each spec and decided here, in the marker, never by the caller:

* ``firstresult``: the first implementation returning something other than ``None`` wins. Implementations run
  in LIFO registration order (extras, precision, environment, strategy, accelerator, then the defaults), so the
  later a plugin is registered the earlier it answers. Use ``tryfirst``/``trylast`` only where an order is part
  of the contract.
* ``wrapper`` (:func:`torchplug_step_ops`): a plugin wraps the hook with ``@hookimpl(wrapper=True)``, takes the
  answer of the plugins below it from ``yield`` and returns it changed. Wrappers unwind innermost first, so the
  accelerator changes the answer first, then the strategy, the environment, the precision and the extras.
* otherwise every implementation runs and the caller gets the list of results.

What a hook may read: ``trainer.run`` (a frozen :class:`torchplug.RunSpec`: the selected backends' names, the
device type, device ids, nodes and processes) from :func:`torchplug_configure` on, and ``trainer.world``
(:class:`torchplug.World`: this process's ranks) and ``trainer.root_device`` from setup on. Compatibility is
decided on capabilities (``trainer.run.device_type == "cuda"``), never on the names users typed.

"Every rank" means every process of the job; hooks without that note run in each process too, unless they say
"calling process only". ``trainer`` is always the :class:`torchplug.Trainer` running the hook. No hook is called
per batch: per-batch work is bound once per run through :func:`torchplug_step_ops`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from torchplug._step import StepOps
    from torchplug._types import ClusterInfo, Restart, World
    from torchplug.trainer import Trainer

hookspec = pluggy.HookspecMarker("torchplug")


# --------------------------------------------------------------------------------------------------------------
# selection: every process, while the Trainer is constructed, before trainer.run exists
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_select_devices(devices: Any, device_count: int | None, device_type: str) -> list[int] | None:
    """The device indices this run uses, from the user's ``devices`` argument.

    Called once per Trainer construction, in every process. ``device_count`` is the accelerator's
    ``device_count()`` (``None``: any number, as on the CPU) and ``device_type`` its declared device type, for
    messages. Answered by an
    accelerator that chooses devices itself (``auto_select_gpus``); the default parses ``devices`` (``2``,
    ``-1``, ``[1, 3]``, ``"1, 3"``, ``"auto"``) and checks the indices against ``device_count``. Stops at the
    first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_default_strategy(device_ids: list[int], num_nodes: int) -> str | None:
    """The strategy that ``strategy="auto"`` means for these devices.

    Called once per Trainer construction, in every process, only for ``strategy="auto"``. Answered by the
    accelerator: the base :class:`~torchplug.accelerators.Accelerator` answers
    ``"single_device"`` for one device on one node and ``"ddp"`` otherwise; TPUs answer ``"single_xla"`` or
    ``"xla"``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_precision_name(precision: str) -> str | None:
    """The precision to load in place of the one the user named, on this accelerator.

    TPUs have no float16 arithmetic, so the XLA accelerator answers ``"bf16-mixed"`` for ``"16-mixed"``/``16``
    (with a notice). Called once per Trainer construction, in every process, when the precision was given by
    name. Answered by the accelerator; ``None``
    keeps the name. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_num_processes(device_ids: list[int], num_nodes: int) -> int | None:
    """How many processes per node the run uses (1 for one process that drives every device, like ``dp``).

    Called once per Trainer construction, in every process. Answered by the strategy; the default is 1. Stops at
    the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# configuration: every process, once per Trainer, after trainer.run is set
# --------------------------------------------------------------------------------------------------------------


@hookspec
def torchplug_configure(trainer: Trainer) -> None:
    """Check that this plugin can run with the others selected, and raise if not. Change nothing.

    Called once per ``Trainer`` construction, in every process, after every selected plugin is registered and
    ``trainer.run`` is set. Every plugin may answer; results are ignored. Raise
    :class:`torchplug.MisconfigurationError` with a message naming the argument, what was given and what would
    work (apex refuses a run whose ``trainer.run.device_type`` is not ``"cuda"``).
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
    so that a ``None`` result is still an answer. A strategy whose processes do not include the calling one
    (``ddp_spawn``) hands the outcome back with :func:`torchplug.distributed.capture_run` and
    :func:`torchplug.distributed.adopt_run`. The default calls ``function()`` here. Stops at the first non-None
    result.
    """


@hookspec(firstresult=True)
def torchplug_cluster_info(trainer: Trainer) -> ClusterInfo | None:
    """Where this process sits in a job made by someone else (torchrun, SLURM) or by our own launcher.

    Called by multi-process strategies, before and after launch, instead of reading scheduler variables
    themselves. Answered by the cluster environment plugin, if one is selected; ``None`` when none is. Stops at
    the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# preemption and restarts: every process, around each stage (the cluster environment answers)
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_requeue_signal(trainer: Trainer) -> int | None:
    """The signal the job's scheduler sends some time before it ends the job, asking it to save and requeue itself.

    SLURM sends the one of ``#SBATCH --signal=USR1@90`` to every task. While a stage runs, this signal is a stop
    request like SIGTERM (every rank stops after the same optimizer step, ``on_exception`` runs, a checkpoint is
    saved for the restart, see :func:`torchplug_restart_info`); then :func:`torchplug_requeue` is called. Called at
    the start of every stage, in every process. Answered by the cluster environment (SLURM's answers its
    ``requeue_signal``, ``SIGUSR1`` by default, unless ``auto_requeue=False``); the default is ``None``: no such
    signal. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_restart_info(trainer: Trainer) -> Restart | None:
    """Whether this process belongs to a job its scheduler may start again, and where the job keeps its restart state.

    Answered by the cluster environment with a :class:`torchplug.Restart` (SLURM: ``SLURM_JOB_ID`` and
    ``SLURM_RESTART_COUNT``; torchelastic, when ``resume_on_restart=True``: ``TORCHELASTIC_RUN_ID`` and
    ``TORCHELASTIC_RESTART_COUNT``); ``None`` (the default): no restarts. When answered, global rank 0 records every
    full checkpoint that ``fit`` saves in ``record``; a stop by a signal saves ``checkpoint`` unless a checkpoint was
    saved at that step; a restarted job's ``fit`` (``restarts >= 1``) resumes from the recorded checkpoint; a ``fit``
    that finishes removes both files. Called in every process, at save time and at the start and end of ``fit``.
    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_requeue(trainer: Trainer) -> str | None:
    """Ask the scheduler to start this job again, after a stop on :func:`torchplug_requeue_signal`.

    Called on global rank 0 only, once every rank has saved and finalized its loggers (the scheduler ends every
    process right after a requeue: nothing may follow it). Answered by the cluster environment (SLURM runs
    ``scontrol requeue <job id>``); return a one-line description of what was done or why it failed, for the
    message printed at the stop. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# setup: every rank, at the start of fit/validate/test/predict, in this order
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_world(trainer: Trainer) -> World | None:
    """Ranks and world size of this process; the default is a world of one.

    First of the setup hooks, on every rank, and cached as ``trainer.world``. Answered by the strategy, from the
    cluster environment's :func:`torchplug_cluster_info`. Must not touch a device or a process group yet. Stops at
    the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_root_device(trainer: Trainer) -> torch.device | None:
    """The device this process computes on (``trainer.root_device``, ``module.device``), made current.

    Called on every rank after :func:`torchplug_world`. Answered by the accelerator, from
    ``trainer.world.local_rank`` and ``trainer.run.device_ids``; the CUDA accelerator also makes it the current
    device, so no other plugin needs to. Stops at the first non-None result.
    """


@hookspec
def torchplug_setup_environment(trainer: Trainer) -> None:
    """Prepare this process on its root device: join the process group, set per-process flags.

    Called on every rank after :func:`torchplug_root_device`. Every plugin may answer; results are ignored. The
    strategy initialises its process group here (on ``trainer.root_device``'s backend); the accelerator applies
    the Trainer's ``benchmark``/``deterministic`` to its libraries.
    """


@hookspec(firstresult=True)
def torchplug_convert_module(trainer: Trainer, module: nn.Module) -> nn.Module | None:
    """Change the user's module for this precision (``bf16-true`` casts parameters and buffers).

    Called once per run on every rank after the module is on ``trainer.root_device``. Answered by the precision
    plugin, which changes the module in place and returns it (a different object is refused: the user's module is
    what the loop, checkpoints and ``self`` in the steps refer to). Stops at the first non-None result.
    """


@hookspec
def torchplug_setup_module(trainer: Trainer, module: nn.Module) -> None:
    """Change the module in place before its optimizers exist (FSDP's ``fully_shard``, activation checkpointing).

    ``module`` is the :class:`torchplug.StepModule` around the user's module (its only child, ``module.module``);
    its ``forward(stage, *args)`` runs the user's ``<stage>_step``, so a wrapper applied to it sees every step.
    Called once per run on every rank after :func:`torchplug_convert_module` and before ``configure_optimizers``,
    so that the optimizers are built over the parameters as they will be trained. Every plugin may answer;
    results are ignored.
    """


@hookspec(firstresult=True)
def torchplug_setup_optimizers(
    trainer: Trainer, module: nn.Module, optimizers: list[Optimizer]
) -> tuple[nn.Module, list[Optimizer]] | None:
    """Let a precision plugin take over the module and its optimizers (apex's ``amp.initialize``).

    Called once per ``fit`` on every rank, after ``configure_optimizers`` and before :func:`torchplug_wrap_module`
    and before any checkpoint is restored. Return ``(module, optimizers)``: the same module, changed in place, and
    the optimizers to use (LR schedulers are re-pointed at them). Answered by the precision plugin. Stops at the
    first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_wrap_module(trainer: Trainer, module: nn.Module) -> nn.Module | None:
    """Wrap the module for this strategy (DistributedDataParallel, DataParallel).

    Called once per run on every rank after :func:`torchplug_setup_optimizers`. ``module`` is the
    :class:`torchplug.StepModule` after :func:`torchplug_setup_module`. Answered by the strategy; return the
    wrapped module; the default returns ``module``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_step_ops(trainer: Trainer) -> StepOps | None:
    """The per-batch operations of this run, bound once: the loop calls them directly, with no hook per batch.

    Called once per run on every rank, after :func:`torchplug_wrap_module`. The core's default answers a
    :class:`torchplug.StepOps` with the one-process, full-precision behaviour. A backend that differs per batch
    implements this as a wrapper and replaces the operations it changes, usually around the ones it received::

        @hookimpl(wrapper=True)
        def torchplug_step_ops(self, trainer):
            ops = yield
            inner = ops.backward
            ops.backward = lambda loss, optimizer: inner(self.scaler.scale(loss), optimizer)
            return ops

    Wrappers unwind in registration order: the accelerator changes the operations first (``to_device``), then
    the strategy (``forward`` through its wrapper, ``no_sync``), then the precision (``forward`` inside
    ``torch.autocast``, ``backward`` with a loss scale), then extra plugins. With ``TORCHPLUG_TRACE_HOOKS=1`` the
    final operations are wrapped once more to print each call; the same operations run either way.
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
# collectives: every rank must make the same calls in the same order
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_all_reduce(trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor | None:
    """Reduce ``tensor`` across processes with ``op`` (``"mean"``, ``"sum"``, ``"max"``, ``"min"``).

    Used by ``self.log(..., sync_dist=True)`` and epoch-end metric aggregation; every rank. Answered by the
    strategy; the default returns ``tensor``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_all_gather(trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor | None:
    """Stack ``tensor`` from every process along a new first dimension (``self.all_gather``).

    Every rank; answered by the strategy; the default returns ``tensor.unsqueeze(0)``. Stops at the first
    non-None result.
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


@hookspec(firstresult=True)
def torchplug_gather_objects(trainer: Trainer, obj: Any) -> list[Any] | None:
    """Every rank's picklable ``obj``, in rank order, on every rank (per-rank state for checkpoints).

    Every rank; answered by the strategy; the default returns ``[obj]``. Stops at the first non-None result.
    """


# --------------------------------------------------------------------------------------------------------------
# checkpoints: whoever creates state saves it; the core only orchestrates (layout: docs/checkpoints.md)
# --------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def torchplug_model_state_dict(trainer: Trainer, module: nn.Module) -> dict[str, Any] | None:
    """The user's module's state for a checkpoint, as this strategy holds it.

    Called on every rank when a checkpoint is made. Answered by a strategy that shards or replaces parameters
    (FSDP answers its shards as DTensors, or the full state on rank 0); the default is ``module.state_dict()``.
    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_optimizer_state_dict(trainer: Trainer, optimizer: Optimizer) -> dict[str, Any] | None:
    """One optimizer's state for a checkpoint, as this strategy holds it.

    Called on every rank when a checkpoint is made, once per optimizer. Answered by a sharding strategy; the
    default is ``optimizer.state_dict()``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_save_checkpoint(trainer: Trainer, checkpoint: dict[str, Any], path: str) -> bool | None:
    """Write ``checkpoint`` (made on every rank, with this rank's plugin state) to ``path``.

    Called on every rank by ``trainer.save_checkpoint``. Answered by a strategy that writes something other than
    one file (FSDP writes a directory, each rank its shard, with ``torch.distributed.checkpoint``); the default
    has global rank 0 write one file atomically, with every rank's plugin state gathered into it. The checkpoint
    must appear at ``path`` atomically: all of it or none. A directory checkpoint keeps the dictionary, all but
    the shards, in ``<path>/meta.ckpt`` (one file, as ``torchplug._checkpoint.atomic_save`` writes it): the core
    reads that file to find "last" and "best", to tell a checkpoint directory from another folder, and to name the
    strategy that can load it. Return ``True`` once written. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_load_checkpoint(trainer: Trainer, path: str) -> dict[str, Any] | None:
    """Read the checkpoint at ``path`` on this rank, as the dictionary that was saved.

    Called on every rank when resuming (``ckpt_path``), after setup, so the module and optimizers exist.
    Answered by a strategy whose checkpoints are not one file (FSDP loads its shards into the current module's
    and optimizers' layout); the default reads one file with ``torch.load(weights_only=True)``. Stops at the
    first non-None result.
    """


@hookspec(firstresult=True)
def torchplug_load_model_state_dict(trainer: Trainer, module: nn.Module, state_dict: dict[str, Any]) -> bool | None:
    """Restore the user's module from ``state_dict`` (what :func:`torchplug_model_state_dict` saved).

    Called on every rank when resuming or evaluating from a checkpoint. Answered by a sharding strategy; the
    default is ``module.load_state_dict(state_dict, strict=module.strict_loading)``. Return ``True`` once done. Stops at the first non-None
    result.
    """


@hookspec(firstresult=True)
def torchplug_load_optimizer_state_dict(
    trainer: Trainer, optimizer: Optimizer, state_dict: dict[str, Any]
) -> bool | None:
    """Restore one optimizer from ``state_dict``. Every rank, when resuming ``fit``; answered as its counterpart."""


@hookspec
def torchplug_state_dict(trainer: Trainer) -> dict[str, Any] | None:
    """This plugin's state on this rank, as ``{key: state}`` (AMP's scaler).

    Called on every rank when a checkpoint is made. Every plugin may answer; the dicts are merged (pick a key that
    names the plugin). State is kept per rank: the checkpoint holds every rank's answer
    (``checkpoint["ranks"][r]["plugins"]``), so state that differs between ranks is never lost. It must hold only
    tensors and plain Python data.
    """


@hookspec
def torchplug_load_state_dict(trainer: Trainer, states: Mapping[str, Any]) -> None:
    """Restore this plugin's state: ``states`` is what this rank's plugins saved (see below), read-only.

    Called on every rank after the module and optimizers are restored (the order apex needs). Every plugin may
    answer and reads its own key; keys no plugin reads are reported in a warning naming them. When resuming on
    another number of processes, rank ``r`` gets the state of saved rank ``r``, or of saved rank 0 where there is
    none (a warning names the keys whose saved values differed between ranks). A plugin may refuse a checkpoint it
    cannot resume (apex with another opt level) by raising :class:`torchplug.MisconfigurationError`.
    """


@hookspec
def torchplug_get_rng_states(trainer: Trainer) -> dict[str, Any] | None:
    """This plugin's random generators on this rank, as ``{key: state}`` (the CUDA generator of the root device).

    Called on every rank wherever the core captures the host's generators: at the start of every training epoch
    (to replay the epoch's data order when resuming inside it) and in every checkpoint. Every plugin may answer;
    the dicts are merged with the host's states (keys ``torch``, ``python``, ``numpy`` are taken).
    """


@hookspec
def torchplug_set_rng_states(trainer: Trainer, states: dict[str, Any]) -> None:
    """Restore this plugin's generators from ``states`` (what :func:`torchplug_get_rng_states` captured, merged
    with the host's), wherever the core restores the host's: when a resumed ``fit`` continues exactly where it was
    saved. Every rank; every plugin may answer and reads its own keys.
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
    """Release what setup took (wrappers, device memory). Every rank, after the run, also after an error.

    Every plugin may answer; results are ignored. Must not raise when setup stopped half way. A process group may
    outlive the run: the next ``fit``/``validate`` of the same script reuses it.
    """
