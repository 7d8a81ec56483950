"""``ddp``: DistributedDataParallel, one process per device.

Launching, ranks, the process group, samplers and collectives come from the core's
:class:`torchplug.distributed.ProcessGroupStrategy`; this class adds the wrapper and its options. When nothing
started the processes (no torchrun, no srun), the first process re-runs the user's command for the other local
ranks, the way ``python train.py`` becomes N processes.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Generator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.distributed import DEFAULT_HANG_TIMEOUT_S, ProcessGroupStrategy

if TYPE_CHECKING:
    from torchplug import Trainer


class DDPStrategy(ProcessGroupStrategy):
    """Options (``Trainer(strategy="ddp", find_unused_parameters=True, ...)`` or ``DDPStrategy(...)``):

    * ``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``, ``bucket_cap_mb``,
      ``broadcast_buffers``: passed to :class:`~torch.nn.parallel.DistributedDataParallel`.
    * ``sync_batchnorm``: convert BatchNorm layers to :class:`~torch.nn.SyncBatchNorm` before wrapping.
    * ``process_group_backend``, ``timeout``, ``start_method``, ``hang_timeout``: see
      :class:`~torchplug.distributed.ProcessGroupStrategy`.

    To subclass: :meth:`wrap` makes the DistributedDataParallel (``self.ddp`` during a run), and
    :meth:`ddp_kwargs` its keyword arguments; hooks of the base class apply.
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
        start_method: str | None = None,
        hang_timeout: float | None = DEFAULT_HANG_TIMEOUT_S,
    ) -> None:
        super().__init__(
            process_group_backend=process_group_backend, timeout=timeout, start_method=start_method,
            hang_timeout=hang_timeout,
        )  # fmt: skip
        self.find_unused_parameters = bool(find_unused_parameters)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.static_graph = bool(static_graph)
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = bool(broadcast_buffers)

    def _reset(self) -> None:
        super()._reset()
        self.ddp: DistributedDataParallel | None = None

    @property
    def is_distributed(self) -> bool:
        """Always True (kept for code written for Lightning before 2.0; deprecated there and here)."""
        warnings.warn(
            f"`{type(self).__name__}.is_distributed` is deprecated and always True: every process of a DDP job is "
            "distributed. Read `trainer.world_size > 1` to know whether there are several processes.",
            DeprecationWarning,
            stacklevel=2,
        )
        return True

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("ddp", None)
        return state

    # ------------------------------------------------------------------------------------------------ configuration
    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        super().torchplug_configure(trainer)
        if self.sync_batchnorm and trainer.run.device_type == "cpu":
            raise MisconfigurationError(
                "sync_batchnorm=True on the CPU: torch's SyncBatchNorm synchronises only GPU/XPU tensors. "
                "Use a GPU, or leave sync_batchnorm off on the CPU"
            )

    # ------------------------------------------------------------------------------------------------ setup
    @hookimpl
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        if self.sync_batchnorm:
            # in place, so the optimizer keeps the very same parameters
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if not any(p.requires_grad for p in module.parameters()):
            return module  # evaluation of a frozen model: nothing to synchronise
        self.ddp = self.wrap(trainer, module)
        return self.ddp

    def wrap(self, trainer: Trainer, module: nn.Module) -> DistributedDataParallel:
        return DistributedDataParallel(module, **self.ddp_kwargs(trainer))

    def ddp_kwargs(self, trainer: Trainer) -> dict[str, Any]:
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

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        ddp = self.ddp
        if ddp is not None:
            ops.no_sync = ddp.no_sync  # accumulation micro-batches skip the gradient all-reduce
        return ops

    # ------------------------------------------------------------------------------------------------ teardown
    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        super().torchplug_teardown(trainer)
        self.ddp = None
        gc.collect()  # the DDP reducer must be gone before its process group may be
