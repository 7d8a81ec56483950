"""``ddp``: DistributedDataParallel, one process per device.

When nothing started the processes (no torchrun, no srun), the first process re-runs the user's command for the
other local ranks (:mod:`torchplug_ddp._launcher`), the way ``python train.py`` becomes N processes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchplug import ClusterInfo, MisconfigurationError, World, hookimpl
from torchplug.strategies import Strategy
from torchplug.utilities import distributed_loader, needs_distributed_sampler
from torchplug_ddp import _collectives, _launcher
from torchplug_ddp._failures import from_exception

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchplug import Trainer

_DEVICE_TYPES = {"gpu": "cuda"}


def _as_timedelta(timeout: Any) -> timedelta:
    if isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return timedelta(seconds=timeout)
    raise MisconfigurationError(f"timeout={timeout!r}: expected a datetime.timedelta or a number of seconds > 0")


class DDPStrategy(Strategy):
    """Options (``Trainer(strategy="ddp", find_unused_parameters=True, ...)`` or ``DDPStrategy(...)``):

    * ``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``, ``bucket_cap_mb``,
      ``broadcast_buffers``: passed to :class:`~torch.nn.parallel.DistributedDataParallel`.
    * ``process_group_backend``: ``"nccl"``, ``"gloo"``, ...; default nccl for cuda, gloo otherwise.
    * ``timeout``: how long a collective (and the rendezvous) may wait, a timedelta or seconds; 30 minutes.
    * ``sync_batchnorm``: convert BatchNorm layers to :class:`~torch.nn.SyncBatchNorm` before wrapping.
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        sync_batchnorm: bool = False,
        static_graph: bool = False,
        gradient_as_bucket_view: bool = False,
        bucket_cap_mb: float | None = None,
        broadcast_buffers: bool = True,
    ) -> None:
        self.find_unused_parameters = bool(find_unused_parameters)
        self.process_group_backend = process_group_backend
        self.timeout = _as_timedelta(timeout)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.static_graph = bool(static_graph)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = bool(broadcast_buffers)
        self._reset()

    def _reset(self) -> None:
        self._world = World()
        self._owns_process_group = False
        self._ddp: DistributedDataParallel | None = None
        self._epoch_samplers: list[Any] = []
        self._device = torch.device("cpu")

    def __getstate__(self) -> dict[str, Any]:
        # Sent to spawned processes inside the Trainer's arguments: options only, never a process group.
        state = dict(self.__dict__)
        for key in ("_world", "_owns_process_group", "_ddp", "_epoch_samplers", "_device"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------------------------------------ configuration
    @hookimpl
    def torchplug_num_processes(self, trainer: Trainer) -> int:
        return len(trainer.device_ids)

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if not dist.is_available():
            raise MisconfigurationError(
                f"strategy={trainer.strategy_name!r} needs torch.distributed, which this build of torch lacks"
            )
        backend = self._backend(trainer)
        if self.process_group_backend is not None and backend not in _available_backends():
            raise MisconfigurationError(
                f"process_group_backend={self.process_group_backend!r}: this torch has {', '.join(_available_backends())}"
            )
        if self.sync_batchnorm and self._device_type(trainer) == "cpu":
            raise MisconfigurationError(
                "sync_batchnorm=True with accelerator='cpu': torch's SyncBatchNorm synchronises only GPU/XPU tensors. "
                "Use a GPU, or leave sync_batchnorm off on the CPU"
            )

    def _device_type(self, trainer: Trainer) -> str:
        return _DEVICE_TYPES.get(trainer.accelerator_name, trainer.accelerator_name)

    def _backend(self, trainer: Trainer) -> str:
        if self.process_group_backend is not None:
            return str(self.process_group_backend).lower()
        return dist.Backend.default_device_backend_map.get(self._device_type(trainer), "gloo")

    # ------------------------------------------------------------------------------------------------ launch
    def _cluster_info(self, trainer: Trainer) -> ClusterInfo:
        info = trainer.hook.torchplug_cluster_info(trainer=trainer)
        if info is None:
            raise MisconfigurationError(
                f"strategy={trainer.strategy_name!r} needs a cluster environment; none was detected or given in "
                "plugins=[...]. Installed with torchplug-ddp: torchelastic, slurm, local"
            )
        return info

    @hookimpl
    def torchplug_launch(self, trainer: Trainer, function: Callable[[], Any]) -> tuple[Any]:
        info = self._cluster_info(trainer)
        if info.creates_processes_externally:
            return (run_started_process(function, info.global_rank),)
        return (self._launch_processes(trainer, function, info),)

    def _launch_processes(self, trainer: Trainer, function: Callable[[], Any], info: ClusterInfo) -> Any:
        return _launcher.launch(
            function,
            num_processes=trainer.num_processes,
            num_nodes=trainer.num_nodes,
            node_rank=info.node_rank,
            main_address=info.main_address,
            main_port=info.main_port,
            exit_timeout=self.timeout.total_seconds(),
        )

    # ------------------------------------------------------------------------------------------------ setup
    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        self._reset()
        info = self._cluster_info(trainer)
        self._world = World(info.global_rank, info.local_rank, info.node_rank, info.world_size)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = info.main_address, str(info.main_port)
        if self._device_type(trainer) == "cuda" and torch.cuda.is_available():
            torch.cuda.set_device(trainer.device_ids[self._local_device_index(info)])
        if dist.is_initialized():
            if dist.get_world_size() != info.world_size or dist.get_rank() != info.global_rank:
                raise MisconfigurationError(
                    f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already exists, and this "
                    f"run needs rank {info.global_rank} of {info.world_size}: destroy it before fitting"
                )
            return
        dist.init_process_group(
            self._backend(trainer), rank=info.global_rank, world_size=info.world_size, timeout=self.timeout
        )
        self._owns_process_group = True

    def _local_device_index(self, info: ClusterInfo) -> int:
        return info.local_rank

    @hookimpl
    def torchplug_world(self, trainer: Trainer) -> World:
        return self._world

    @hookimpl
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        self._device = trainer.root_device
        if self.sync_batchnorm:
            # in place, so the optimizer keeps the very same parameters
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if not any(p.requires_grad for p in module.parameters()):
            return module  # evaluation of a frozen model: nothing to synchronise
        self._ddp = DistributedDataParallel(self._replica(trainer, module), **self._ddp_kwargs(trainer))
        return self._ddp

    def _replica(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        return module

    def _ddp_kwargs(self, trainer: Trainer) -> dict[str, Any]:
        device = trainer.root_device
        kwargs: dict[str, Any] = dict(
            device_ids=[device.index] if device is not None and device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
            static_graph=self.static_graph,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
        )
        if not self.broadcast_buffers:  # the default (True) is left unsaid: torch 2.13 deprecates the name
            kwargs["broadcast_buffers"] = False
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        return kwargs

    @hookimpl
    def torchplug_setup_dataloader(self, trainer: Trainer, dataloader: DataLoader, stage: str) -> DataLoader:
        loader = dataloader
        if getattr(trainer, "use_distributed_sampler", True) and needs_distributed_sampler(dataloader):
            loader = distributed_loader(dataloader, self._world.world_size, self._world.global_rank)
        if stage == "fit":
            sampler = getattr(loader, "sampler", None)
            batch_sampler = getattr(loader, "batch_sampler", None)
            for candidate in (sampler, getattr(batch_sampler, "sampler", None)):
                if hasattr(candidate, "set_epoch") and candidate not in self._epoch_samplers:
                    self._epoch_samplers.append(candidate)
        return loader

    @hookimpl
    def torchplug_on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for sampler in self._epoch_samplers:
            sampler.set_epoch(epoch)

    # ------------------------------------------------------------------------------------------------ step
    @hookimpl
    def torchplug_no_sync(self, trainer: Trainer) -> AbstractContextManager[None] | None:
        return self._ddp.no_sync() if self._ddp is not None else None

    # ------------------------------------------------------------------------------------------------ collectives
    @hookimpl
    def torchplug_all_reduce(self, trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return _collectives.all_reduce(tensor, op, self._comm_device(trainer))

    @hookimpl
    def torchplug_barrier(self, trainer: Trainer, name: str) -> bool:
        _collectives.barrier(self._comm_device(trainer))
        return True

    @hookimpl
    def torchplug_broadcast(self, trainer: Trainer, obj: Any, src: int) -> tuple[Any]:
        return (_collectives.broadcast_object(obj, src, self._comm_device(trainer)),)

    def _comm_device(self, trainer: Trainer) -> torch.device:
        if _collectives.active() and dist.get_backend() == "nccl":
            return trainer.root_device or torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------------------------------------ teardown
    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        self._ddp = None
        gc.collect()  # the DDP reducer must be gone before its process group (see the core's teardown)
        if self._owns_process_group and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - teardown after a failed peer must not mask the real error
                pass
        self._owns_process_group = False


def run_started_process(function: Callable[[], Any], rank: int) -> Any:
    """Run ``function`` in a process that exists already (ours, torchrun's or srun's), so failures are reported
    by whoever supervises it: our launcher, or torchrun's error-file summary."""
    if _launcher.supervising():
        return _launcher.run_supervised(function)
    if _launcher.launched_child():
        return _launcher.run_child(function, rank)
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        try:
            return function()
        except BaseException as exc:
            if not isinstance(exc, SystemExit):
                _record_for_torchelastic(rank, exc)
            raise
    return function()


def _record_for_torchelastic(rank: int, exc: BaseException) -> None:
    """Write torchrun's error file, so its failure summary shows this traceback as the root cause."""
    import json
    import time

    failure = from_exception(rank, exc)
    record = {
        "message": {
            "message": f"{type(exc).__name__}: {exc}",
            "extraInfo": {"py_callstack": failure.traceback, "timestamp": str(int(time.time()))},
        }
    }
    try:
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as fh:
            json.dump(record, fh)
    except OSError:
        pass


def _available_backends() -> list[str]:
    found = []
    for name, check in (("gloo", "is_gloo_available"), ("nccl", "is_nccl_available"), ("mpi", "is_mpi_available"),
                        ("ucc", "is_ucc_available"), ("xccl", "is_xccl_available")):  # fmt: skip
        if getattr(dist, check, lambda: False)():
            found.append(name)
    return found
