"""``ProcessGroupStrategy``: one process per device, joined in a ``torch.distributed`` process group.

Everything a data-parallel strategy needs besides how it wraps the module: launching and supervising the processes
(or finding them started by torchrun or SLURM), ranks, the process group, a ``DistributedSampler`` per loader,
collectives. ``ddp`` adds DistributedDataParallel to it, ``fsdp`` sharding; a third party subclasses either.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist

from torchplug import _state
from torchplug._errors import MisconfigurationError
from torchplug._hooks import hookimpl
from torchplug._types import ClusterInfo, World
from torchplug.distributed import _collectives, _hang, _launcher, _spawn
from torchplug.distributed._failures import from_exception
from torchplug.strategies import Strategy
from torchplug.utilities import distributed_loader, needs_distributed_sampler

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchplug.trainer import Trainer

START_METHODS = ("popen", "spawn", "fork")


def as_timedelta(timeout: Any, name: str = "timeout") -> timedelta:
    if isinstance(timeout, timedelta):
        return timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return timedelta(seconds=timeout)
    raise MisconfigurationError(f"{name}={timeout!r}: expected a datetime.timedelta or a number of seconds > 0")


class ProcessGroupStrategy(Strategy):
    """One process per device in a process group; subclasses decide how the module is wrapped.

    Options (Trainer keywords of every subclass):

    * ``process_group_backend``: ``"nccl"``, ``"gloo"``, ...; default: torch's backend for the device type
      (nccl for cuda, gloo for cpu).
    * ``timeout``: how long a collective (and the rendezvous) may wait, a timedelta or seconds; 30 minutes.
    * ``hang_timeout``: seconds a rank's loop may go without progress (a training or evaluation batch, a checkpoint
      save) before the launcher dumps every rank's Python stack, names the rank that hangs and ends the job; 600.
      ``None`` turns it off. Under torchrun or srun each rank watches itself and ends itself (see docs/ddp.md).
    * ``start_method``: how processes are made when nothing else started them: ``"popen"`` re-runs the user's
      command (``python train.py`` becomes N processes; nothing is pickled), ``"spawn"``/``"fork"`` start
      ``torch.multiprocessing`` workers with a pickled copy of the run and hand rank 0's outcome back to the caller.
      Under torchrun or srun the processes exist already and none is started.

    The process group outlives a run: the next ``fit``/``validate``/``test``/``predict`` of the script reuses it
    (every process runs the same sequence of stages), and it is destroyed when the process exits.
    """

    needs_cluster_environment: ClassVar[bool] = True
    #: The ``start_method`` when none is given; ``ddp_spawn`` sets ``"spawn"``.
    default_start_method: ClassVar[str] = "popen"

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        start_method: str | None = None,
        hang_timeout: float | None = _hang.DEFAULT_TIMEOUT_S,
    ) -> None:
        self.process_group_backend = process_group_backend
        self.timeout = as_timedelta(timeout)
        if hang_timeout is not None and (
            isinstance(hang_timeout, bool) or not isinstance(hang_timeout, (int, float)) or hang_timeout <= 0
        ):
            raise MisconfigurationError(
                f"hang_timeout={hang_timeout!r}: give the seconds a rank may make no progress (a number > 0), or None "
                "to turn hang detection off"
            )
        self.hang_timeout = float(hang_timeout) if hang_timeout is not None else None
        start_method = start_method or self.default_start_method
        if start_method not in START_METHODS:
            raise MisconfigurationError(
                f"start_method={start_method!r}: use {', '.join(map(repr, START_METHODS))} ('forkserver' is refused: "
                "its workers are not children of this process, so they cannot be made to die with it)"
            )
        self.start_method = start_method
        self._reset()

    def _reset(self) -> None:
        self._world = World()
        self._device = torch.device("cpu")
        self._epoch_samplers: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        # Sent to spawned processes inside the Trainer's arguments: options only, never a process group.
        state = dict(self.__dict__)
        for key in ("_world", "_device", "_epoch_samplers"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------------------------------------ configuration
    @hookimpl
    def torchplug_num_processes(self, device_ids: list[int], num_nodes: int) -> int:
        return len(device_ids)

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if not dist.is_available():
            raise MisconfigurationError(
                f"strategy={trainer.strategy_name!r} needs torch.distributed, which this build of torch lacks"
            )
        backend = self.backend(trainer)
        if self.process_group_backend is not None and backend not in available_backends():
            raise MisconfigurationError(
                f"process_group_backend={self.process_group_backend!r}: this torch has {', '.join(available_backends())}"
            )

    def backend(self, trainer: Trainer) -> str:
        """The process group's backend: the one asked for, else torch's default for the run's device type."""
        if self.process_group_backend is not None:
            return str(self.process_group_backend).lower()
        return dist.Backend.default_device_backend_map.get(trainer.run.device_type, "gloo")

    # ------------------------------------------------------------------------------------------------ launch
    def cluster_info(self, trainer: Trainer) -> ClusterInfo:
        info = trainer.hook.torchplug_cluster_info(trainer=trainer)
        if info is None:
            raise MisconfigurationError(
                f"strategy={trainer.strategy_name!r} needs a cluster environment; none was detected or given in "
                "plugins=[...]. Built in: torchelastic, slurm, local"
            )
        return info

    @hookimpl
    def torchplug_launch(self, trainer: Trainer, function: Callable[[], Any]) -> tuple[Any]:
        info = self.cluster_info(trainer)
        if info.creates_processes_externally:
            if not _launcher.supervising() and not _launcher.launched_child() and info.world_size > 1:
                _hang.watch_self(info.global_rank, self.hang_timeout)  # torchrun's or srun's: no supervisor of ours
            return (run_started_process(function, info.global_rank),)
        if self.start_method == "popen":
            if info.world_size == 1:  # a process group of one: nothing to start
                return (function(),)
            return (
                _launcher.launch(
                    function, num_processes=trainer.num_processes, num_nodes=trainer.num_nodes,
                    node_rank=info.node_rank, main_address=info.main_address, main_port=info.main_port,
                    exit_timeout=self.timeout.total_seconds(), hang_timeout=self.hang_timeout,
                ),
            )  # fmt: skip
        has_answer, answer = _spawn.spawn(
            _HandBack(function), num_processes=trainer.num_processes, num_nodes=trainer.num_nodes,
            node_rank=info.node_rank, main_address=info.main_address, main_port=info.main_port,
            start_method=self.start_method, hang_timeout=self.hang_timeout,
        )  # fmt: skip
        return (_state.adopt_run(trainer, answer) if has_answer else None,)

    # ------------------------------------------------------------------------------------------------ setup
    @hookimpl
    def torchplug_world(self, trainer: Trainer) -> World:
        self._reset()
        info = self.cluster_info(trainer)
        self._world = World(info.global_rank, info.local_rank, info.node_rank, info.world_size)
        return self._world

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        info = self.cluster_info(trainer)
        self._device = trainer.root_device
        if dist.is_initialized():
            if dist.get_world_size() != info.world_size or dist.get_rank() != info.global_rank:
                raise MisconfigurationError(
                    f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already exists, and this "
                    f"run needs rank {info.global_rank} of {info.world_size}: every Trainer of one script must use "
                    "the same devices and num_nodes, or destroy the process group before fitting"
                )
            return
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = info.main_address, str(info.main_port)
        dist.init_process_group(
            self.backend(trainer), rank=info.global_rank, world_size=info.world_size, timeout=self.timeout,
            store=_torchelastic_attempt_store(info, self.timeout),
        )  # fmt: skip
        atexit.register(_destroy_process_group)

    @hookimpl
    def torchplug_setup_dataloader(self, trainer: Trainer, dataloader: DataLoader, stage: str) -> DataLoader:
        loader = dataloader
        world = self._world
        if trainer.use_distributed_sampler and needs_distributed_sampler(dataloader):
            loader = distributed_loader(dataloader, world.world_size, world.global_rank)
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

    # ------------------------------------------------------------------------------------------------ collectives
    def comm_device(self) -> torch.device:
        """Where collectives run: the root device for NCCL (no CPU tensors), the CPU otherwise."""
        if _collectives.active() and dist.get_backend() == "nccl":
            return self._device
        return torch.device("cpu")

    @hookimpl
    def torchplug_all_reduce(self, trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor:
        return _collectives.all_reduce(tensor, op, self.comm_device())

    @hookimpl
    def torchplug_all_gather(self, trainer: Trainer, tensor: torch.Tensor) -> torch.Tensor:
        return _collectives.all_gather(tensor, self.comm_device())

    @hookimpl
    def torchplug_barrier(self, trainer: Trainer, name: str) -> bool:
        _collectives.barrier(self.comm_device())
        return True

    @hookimpl
    def torchplug_broadcast(self, trainer: Trainer, obj: Any, src: int) -> tuple[Any]:
        return (_collectives.broadcast_object(obj, src, self.comm_device()),)

    @hookimpl
    def torchplug_gather_objects(self, trainer: Trainer, obj: Any) -> list[Any]:
        return _collectives.gather_objects(obj, self.comm_device())

    # ------------------------------------------------------------------------------------------------ teardown
    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        self._epoch_samplers = []


class _HandBack:
    """Run a stage in a spawned process; global rank 0 answers what the caller adopts (picklable for spawn).

    The trainer's copy there carries the caller's counters and flags (``Trainer.__getstate__``), so that a second
    ``fit`` on one trainer continues where the first ended, as it does in one process.
    """

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function

    def __call__(self) -> Any:
        trainer = self.function.trainer  # the stage's trainer (torchplug.trainer._Launch)
        result = self.function()
        return _state.capture_run(trainer, result) if trainer.is_global_zero else None


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


def _torchelastic_attempt_store(info: ClusterInfo, timeout: timedelta) -> Any:
    """Under torchrun, a store of this attempt's own (``None`` elsewhere: torch makes one from the environment).

    torchrun (torch 2.13) keeps one rendezvous TCPStore for every restart of the workers, so a restarted process
    group can read the addresses the previous attempt's processes left there and fail to connect (gloo: "Connection
    refused"; checked without torchplug too). Keys under ``torchplug/attempt_<TORCHELASTIC_RESTART_COUNT>`` are new
    for every attempt.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    store = dist.TCPStore(info.main_address, info.main_port, world_size=info.world_size, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"torchplug/attempt_{attempt}", store)


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - at exit, after a failed peer: nothing left to report to
            pass


def available_backends() -> list[str]:
    found = []
    for name, check in (("gloo", "is_gloo_available"), ("nccl", "is_nccl_available"), ("mpi", "is_mpi_available"),
                        ("ucc", "is_ucc_available"), ("xccl", "is_xccl_available")):  # fmt: skip
        if getattr(dist, check, lambda: False)():
            found.append(name)
    return found
