"""``fsdp``: fully sharded data parallel with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process holds 1/N of every parameter, gradient and optimizer state (as ``DTensor`` shards) and all-gathers a
unit's parameters just before the unit computes. Launching, supervision, ranks, the process group, samplers and
collectives come from the core's :class:`torchplug.distributed.ProcessGroupStrategy`; this class shards the
module, binds accumulation without communication, and saves what it shards.

Setup, in the core's order: ``torchplug_setup_module`` receives the :class:`torchplug.StepModule` whose child
is the user's module, applies activation checkpointing, makes the policy's submodules shard units (bottom-up),
then shards the StepModule as the root, so the user's ``*_step`` methods and direct submodule calls run with
full parameters. ``configure_optimizers`` runs after that, over the shards; ``torchplug_wrap_module`` checks it
did.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.distributed import ProcessGroupStrategy
from torchplug_fsdp import _checkpoint
from torchplug_fsdp._policy import as_policy, select_modules, select_units

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from torchplug import Trainer

#: Where a sharded user module keeps its root (the StepModule FSDP made the root), so that a later
#: ``validate``/``test``/``predict``/``fit`` of the same module in this process reuses it instead of sharding twice.
_ROOT_ATTRIBUTE = "_torchplug_fsdp_root"

SHARDING_STRATEGIES = ("FULL_SHARD", "HYBRID_SHARD")
STATE_DICT_TYPES = ("sharded", "full")
DEVICE_TYPES = ("cpu", "cuda")

#: ddp's options, and why fsdp has none of them.
_DDP_OPTIONS = {
    "find_unused_parameters": "FSDP2 reduces the gradients of the parameters that got one; unused ones need nothing",
    "static_graph": "it is a DistributedDataParallel optimisation",
    "gradient_as_bucket_view": "FSDP2 has no gradient buckets",
    "bucket_cap_mb": "FSDP2 communicates per shard unit: choose the units with auto_wrap_policy",
    "broadcast_buffers": "FSDP2 does not synchronise buffers (each rank keeps its own; see docs/fsdp.md)",
    "sync_batchnorm": "fsdp does not convert BatchNorm layers; use strategy='ddp' for SyncBatchNorm",
}


class FSDPStrategy(ProcessGroupStrategy):
    """``Trainer(strategy="fsdp", auto_wrap_policy={nn.TransformerEncoderLayer}, ...)`` or ``FSDPStrategy(...)``.

    * ``auto_wrap_policy``: which submodules become their own shard units (all-gathered and freed one at a time):
      a set of module classes, or a callable ``module -> bool``. Everything else is in the root unit, gathered
      for the whole step. ``None`` (default): one unit, the whole model (memory: only the optimizer state and
      the stored gradients are sharded while a step runs).
    * ``reshard_after_forward``: free a unit's gathered parameters after its forward (``True``, default) and
      gather them again in backward; ``False`` keeps them until backward (more memory, less communication); an
      int ``k`` reshards to groups of ``k`` ranks.
    * ``sharding_strategy``: ``"FULL_SHARD"`` (default; shard over every process) or ``"HYBRID_SHARD"`` (shard
      within a node, replicate across nodes: a 2-D mesh ``(num_nodes, devices)``, or ``device_mesh``).
    * ``device_mesh``: ``(replicas, shards)`` for ``HYBRID_SHARD`` when a node is not the shard group.
    * ``cpu_offload``: keep the parameter shards (and so the optimizer step) in host memory, GPUs only.
    * ``activation_checkpointing_policy``: module classes (or a callable) whose activations are recomputed in
      backward instead of stored.
    * ``state_dict_type``: ``"sharded"`` (default; a checkpoint is a directory, each rank writes its shards) or
      ``"full"`` (one file written by rank 0, loadable into a plain ``nn.Module``).
    * ``reshard_between_micro_batches``: with ``accumulate_grad_batches``, free gathered parameters after each
      micro-batch's backward (``True``, default) or keep them for the next one (``False``: fewer all-gathers).
    * ``process_group_backend``, ``timeout``: see :class:`~torchplug.distributed.ProcessGroupStrategy`.

    To subclass: :meth:`mesh` makes the device mesh, :meth:`shard` applies ``fully_shard``; ``self.root`` is
    the sharded root during a run.
    """

    def __init__(
        self,
        auto_wrap_policy: Any = None,
        activation_checkpointing_policy: Any = None,
        reshard_after_forward: bool | int = True,
        sharding_strategy: str = "FULL_SHARD",
        device_mesh: tuple[int, int] | None = None,
        cpu_offload: bool = False,
        state_dict_type: str = "sharded",
        reshard_between_micro_batches: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        start_method: str | None = None,
        # ddp's options: refused with the reason (see _DDP_OPTIONS)
        find_unused_parameters: Any = None,
        static_graph: Any = None,
        gradient_as_bucket_view: Any = None,
        bucket_cap_mb: Any = None,
        broadcast_buffers: Any = None,
        sync_batchnorm: Any = None,
        activation_checkpointing: Any = None,
    ) -> None:
        given = {k: v for k, v in locals().items() if k in _DDP_OPTIONS and v is not None}
        if given:
            name = next(iter(given))
            raise MisconfigurationError(
                f"{name}={given[name]!r} is an option of strategy='ddp'; strategy='fsdp' has no such option: "
                f"{_DDP_OPTIONS[name]}. Drop it"
            )
        if start_method not in (None, "popen"):
            raise MisconfigurationError(
                f"start_method={start_method!r}: strategy='fsdp' starts its processes by re-running your command "
                "(or runs under torchrun/srun). A spawned run hands its weights back to the caller as one state "
                "dict, which sharded parameters are not; leave start_method unset"
            )
        if activation_checkpointing is not None:  # Lightning's name before 2.1: module classes only
            if activation_checkpointing_policy is not None:
                raise MisconfigurationError(
                    "You cannot set both `activation_checkpointing` and `activation_checkpointing_policy`. Use the "
                    f"latter (given: activation_checkpointing={activation_checkpointing!r}, "
                    f"activation_checkpointing_policy={activation_checkpointing_policy!r})"
                )
            given = activation_checkpointing
            classes = list(given) if isinstance(given, (list, tuple)) else [given]
            warnings.warn(
                f"`FSDPStrategy(activation_checkpointing={activation_checkpointing!r})` is deprecated, use "
                f"`FSDPStrategy(activation_checkpointing_policy={set(classes)!r})` instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            activation_checkpointing_policy = set(classes)
        super().__init__(process_group_backend=process_group_backend, timeout=timeout, start_method="popen")
        self.auto_wrap_policy = as_policy(auto_wrap_policy, "auto_wrap_policy")
        self.activation_checkpointing_policy = as_policy(
            activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        if isinstance(reshard_after_forward, bool) or (
            isinstance(reshard_after_forward, int) and reshard_after_forward >= 1
        ):
            self.reshard_after_forward = reshard_after_forward
        else:
            raise MisconfigurationError(
                f"reshard_after_forward={reshard_after_forward!r}: use True, False, or an int k >= 1 (reshard to "
                "groups of k ranks; k must divide the number of ranks that shard)"
            )
        if sharding_strategy not in SHARDING_STRATEGIES:
            hint = {
                "SHARD_GRAD_OP": " (FSDP1's SHARD_GRAD_OP is reshard_after_forward=False)",
                "NO_SHARD": " (no sharding at all is strategy='ddp')",
                "_HYBRID_SHARD_ZERO2": " (that is HYBRID_SHARD with reshard_after_forward=False)",
            }.get(str(sharding_strategy).upper(), "")
            raise MisconfigurationError(
                f"sharding_strategy={sharding_strategy!r}: use {' or '.join(map(repr, SHARDING_STRATEGIES))}{hint}"
            )
        self.sharding_strategy = sharding_strategy
        if device_mesh is not None:
            if sharding_strategy != "HYBRID_SHARD":
                raise MisconfigurationError(
                    f"device_mesh={device_mesh!r} shapes the 2-D mesh of sharding_strategy='HYBRID_SHARD'; with "
                    f"sharding_strategy={sharding_strategy!r} every process shards. Pass both, or neither"
                )
            if not (isinstance(device_mesh, (tuple, list)) and len(device_mesh) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in device_mesh)):  # fmt: skip
                raise MisconfigurationError(
                    f"device_mesh={device_mesh!r}: expected (replicas, shards), two ints >= 1 whose product is the "
                    "number of processes"
                )
            device_mesh = (int(device_mesh[0]), int(device_mesh[1]))
        self.device_mesh = device_mesh
        self.cpu_offload = bool(cpu_offload)
        if state_dict_type not in STATE_DICT_TYPES:
            raise MisconfigurationError(
                f"state_dict_type={state_dict_type!r}: use 'sharded' (a directory, each rank writes its shards) or "
                "'full' (one file written by rank 0)"
            )
        self.state_dict_type = state_dict_type
        self.reshard_between_micro_batches = bool(reshard_between_micro_batches)

    def _reset(self) -> None:
        super()._reset()
        self.root: nn.Module | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("root", None)
        return state

    # ------------------------------------------------------------------------------------------------ configuration
    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        super().torchplug_configure(trainer)
        device_type = trainer.run.device_type
        if device_type not in DEVICE_TYPES:
            raise MisconfigurationError(
                f"strategy='fsdp' shards over torch.distributed device meshes on {' and '.join(DEVICE_TYPES)}; "
                f"accelerator={trainer.accelerator_name!r} computes on {device_type!r}"
            )
        if self.cpu_offload and device_type == "cpu":
            raise MisconfigurationError(
                "cpu_offload=True moves parameter shards from an accelerator to host memory, and this run computes "
                "on the CPU already (accelerator='cpu'): leave cpu_offload off"
            )
        if self.sharding_strategy == "HYBRID_SHARD":
            replicas, shards = self.mesh_shape(trainer)
            if replicas * shards != trainer.run.world_size:
                raise MisconfigurationError(
                    f"device_mesh={(replicas, shards)!r} holds {replicas * shards} processes, and the job has "
                    f"{trainer.run.world_size} (devices={trainer.devices_arg!r}, num_nodes={trainer.num_nodes})"
                )

    def mesh_shape(self, trainer: Trainer) -> tuple[int, ...]:
        if self.sharding_strategy == "HYBRID_SHARD":
            return self.device_mesh or (trainer.run.num_nodes, trainer.run.num_processes)
        return (trainer.run.world_size,)

    # ------------------------------------------------------------------------------------------------ setup
    def mesh(self, trainer: Trainer) -> Any:
        """The device mesh to shard over: 1-D over every process, or ``(replicate, shard)`` for HYBRID_SHARD."""
        from torch.distributed.device_mesh import init_device_mesh

        shape = self.mesh_shape(trainer)
        names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
        return init_device_mesh(trainer.root_device.type, shape, mesh_dim_names=names)

    @hookimpl
    def torchplug_setup_module(self, trainer: Trainer, module: nn.Module) -> None:
        user = module.module
        previous = vars(user).get(_ROOT_ATTRIBUTE)
        if previous is not None:  # sharded by an earlier run of this process: shard nothing twice
            self.root = previous
            return
        self.shard(trainer, module)
        vars(user)[_ROOT_ATTRIBUTE] = module  # not a submodule: kept out of state_dict and modules()
        self.root = module

    def shard(self, trainer: Trainer, step_module: nn.Module) -> None:
        """Activation checkpointing, then ``fully_shard`` on the policy's units (bottom-up), then on the root."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        user = step_module.module
        # Both policies are checked against the model before anything is changed.
        units = select_units(user, self.auto_wrap_policy, "auto_wrap_policy")
        recomputed = select_modules(user, self.activation_checkpointing_policy, "activation_checkpointing_policy")
        if recomputed:
            from torch.distributed._composable import checkpoint

            for selected in recomputed:
                checkpoint(selected)
        mesh = self.mesh(trainer)
        # The precision plugin says what the steps compute in; parameters are gathered in that dtype, gradients
        # reduced and optimizer steps taken in float32 (asked by capability: any plugin may declare one).
        compute = getattr(trainer.precision_plugin, "compute_dtype", None)
        if compute is not None:
            unit_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
            # The root receives whole batches: casting them would make float targets 16-bit. Its own parameters
            # are gathered in ``compute`` all the same, and autocast (the precision plugin) mixes dtypes safely.
            root_policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32, cast_forward_inputs=False)
        else:
            unit_policy = root_policy = MixedPrecisionPolicy()
        offload = CPUOffloadPolicy(pin_memory=True) if self.cpu_offload else OffloadPolicy()
        for unit in units:
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.reshard_after_forward, mp_policy=unit_policy,
                        offload_policy=offload)  # fmt: skip
        fully_shard(step_module, mesh=mesh, mp_policy=root_policy, offload_policy=offload)

    @hookimpl
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        root = self.root
        root.reshard()  # an earlier evaluation leaves the root gathered; the optimizers must hold the shards
        _check_optimizers(trainer, root)
        return root

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        ops.no_sync = self.no_sync
        return ops

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Micro-batches that do not end an accumulation window: gradients accumulate unreduced, per rank."""
        root = self.root
        root.set_requires_gradient_sync(False)
        if not self.reshard_between_micro_batches:
            root.set_reshard_after_backward(False)
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)
            if not self.reshard_between_micro_batches:
                root.set_reshard_after_backward(True)

    # ------------------------------------------------------------------------------------------------ checkpoints
    @hookimpl
    def torchplug_model_state_dict(self, trainer: Trainer, module: nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.state_dict_type == "full":  # rank 0 gets every tensor (on the host), the others nothing
            return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return get_model_state_dict(module)

    @hookimpl
    def torchplug_optimizer_state_dict(self, trainer: Trainer, optimizer: Optimizer) -> dict[str, Any]:
        module = trainer.lightning_module
        if self.state_dict_type == "full":
            state = _checkpoint.optimizer_state_dict(module, optimizer, full=True)
            # As optimizer.state_dict() numbers them: the file resumes with any strategy.
            return _checkpoint.to_index_keyed(state) if state else state
        return _checkpoint.optimizer_state_dict(module, optimizer)

    @hookimpl
    def torchplug_save_checkpoint(self, trainer: Trainer, checkpoint: dict[str, Any], path: str) -> bool | None:
        if self.state_dict_type == "full":
            return None  # the core's default: rank 0 writes one file, with every rank's entry
        _checkpoint.save_sharded(trainer, checkpoint, path)
        return True

    @hookimpl
    def torchplug_load_checkpoint(self, trainer: Trainer, path: str) -> dict[str, Any] | None:
        if not _checkpoint.is_sharded_checkpoint(path):
            return None  # one file (state_dict_type="full", or another strategy's): the core reads it
        optimizers = trainer.optimizers if trainer.stage == "fit" else []
        return _checkpoint.load_sharded(trainer, path, trainer.lightning_module, optimizers)

    @hookimpl
    def torchplug_load_model_state_dict(self, trainer: Trainer, module: nn.Module, state_dict: dict[str, Any]) -> bool:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.tensor import DTensor

        if any(_checkpoint.is_ref(v) for v in state_dict.values()):
            raise MisconfigurationError(
                f"ckpt_path={trainer.ckpt_path!r} is the {_checkpoint.META_NAME} of a sharded checkpoint, which "
                "holds no tensors: pass the checkpoint directory that contains it"
            )
        # Shards (a sharded checkpoint) or full tensors (one file: every rank read all of it).
        full = not any(isinstance(v, DTensor) for v in state_dict.values())
        strict = getattr(module, "strict_loading", True)  # as in Lightning: False loads what matches
        set_model_state_dict(module, dict(state_dict), options=StateDictOptions(full_state_dict=full, strict=strict))
        return True

    @hookimpl
    def torchplug_load_optimizer_state_dict(
        self, trainer: Trainer, optimizer: Optimizer, state_dict: dict[str, Any]
    ) -> bool:
        _checkpoint.load_optimizer_state_dict(trainer.lightning_module, optimizer, state_dict)
        return True

    # ------------------------------------------------------------------------------------------------ teardown
    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        super().torchplug_teardown(trainer)
        if self.root is not None:
            with contextlib.suppress(Exception):
                self.root.reshard()
        self.root = None


def _check_optimizers(trainer: Trainer, root: nn.Module) -> None:
    """Every optimizer must step the shards: one made before sharding holds parameters FSDP replaced, and would
    train nothing, silently."""
    from torch.distributed.tensor import DTensor

    owned = {id(p) for p in root.parameters()}
    for index, optimizer in enumerate(trainer.optimizers):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        foreign = [p for p in params if id(p) not in owned]
        if foreign:
            replaced = sum(1 for p in foreign if not isinstance(p, DTensor))
            raise MisconfigurationError(
                f"configure_optimizers returned an optimizer (#{index}, {type(optimizer).__name__}) over "
                f"{len(foreign)} of {len(params)} parameters that are not the sharded module's"
                f"{' (plain tensors: parameters from before sharding)' if replaced else ''}. fsdp replaces every "
                "parameter with its shard before configure_optimizers runs: make the optimizer there, from "
                "self.parameters(); one made earlier (in __init__, setup or configure_model) would train nothing"
            )
        if isinstance(optimizer, torch.optim.SGD) and optimizer.defaults.get("fused"):
            raise MisconfigurationError(
                "configure_optimizers returned SGD(fused=True), which torch cannot run on sharded parameters "
                "(DTensor has no fused SGD); use SGD(foreach=True) or the default"
            )
