"""``strategy="xla"``: one replica per XLA device, started by ``torch_xla``'s ``xmp.spawn``.

Each replica computes gradients on its own share of the data; they are averaged with an XLA all-reduce inside
the optimizer step (between backward and gradient clipping, where ``xm.optimizer_step`` would do it), so the
reduction is part of the step's compiled graph rather than a separate synchronisation.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, StepOps, World, hookimpl
from torchplug.strategies import Strategy
from torchplug_xla import _data, _launch, _runtime
from torchplug_xla.strategies._checks import require_xla_accelerator

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.data import DataLoader

    from torchplug import Trainer

_REDUCE_OPS = {"sum": "sum", "mean": "sum", "max": "max", "min": "min"}


class XLAStrategy(Strategy):
    """Data parallel over XLA devices, one process per device (``Trainer(accelerator="tpu", devices=8)``).

    ``devices`` is 1 or every device of the host: PyTorch/XLA's launcher cannot start a subset (limit the
    visible devices with ``TPU_VISIBLE_CHIPS`` or ``CPU_NUM_DEVICES`` instead). ``sync_module_states`` copies
    replica 0's parameters and buffers to the others before training, so they start equal even when the module
    was initialised without a common seed. ``start_method`` is the multiprocessing start method of the replicas.
    """

    # XLA's lazy tensors do not support inference mode (as in Lightning): evaluation runs under no_grad
    supports_inference_mode = False

    def __init__(self, sync_module_states: bool = True, start_method: str = "spawn") -> None:
        if start_method not in ("spawn", "fork", "forkserver"):
            raise MisconfigurationError(
                f"start_method={start_method!r}: use 'spawn' (the default), 'fork' or 'forkserver'"
            )
        self.sync_module_states = sync_module_states
        self.start_method = start_method
        self._samplers: list[Any] = []

    # ------------------------------------------------------------------------------------------------ configuration
    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        require_xla_accelerator(trainer)
        count = _runtime.count_devices()
        ids = trainer.device_ids
        if len(ids) > 1 and ids != list(range(count)):
            raise MisconfigurationError(
                f"strategy='xla' with devices={trainer.devices_arg!r} ({ids}): PyTorch/XLA starts one process on "
                f"every device of the host ({count} here) or on one. Use devices={count} ('auto'), devices=1, "
                "or make fewer devices visible (TPU_VISIBLE_CHIPS, CPU_NUM_DEVICES) before starting Python"
            )

    @hookimpl
    def torchplug_num_processes(self, device_ids: list[int], num_nodes: int) -> int:
        return len(device_ids)

    # ------------------------------------------------------------------------------------------------ launch
    @hookimpl
    def torchplug_launch(self, trainer: Trainer, function: Callable[[], Any]) -> tuple[Any]:
        _runtime.import_torch_xla("strategy='xla'")
        if len(trainer.device_ids) == 1:
            # xmp.spawn runs a single replica in this process; on a TPU it opens chip 0 unless told otherwise.
            _runtime.pin_one_device(trainer.device_ids[0])
            return (_launch.spawn(function, nprocs=1, start_method=self.start_method),)
        return (_launch.spawn(function, nprocs=None, start_method=self.start_method),)

    @hookimpl
    def torchplug_world(self, trainer: Trainer) -> World:
        import torch_xla.runtime as xr

        return World(
            global_rank=xr.global_ordinal(),
            local_rank=xr.local_ordinal(),
            node_rank=xr.host_index(),
            world_size=xr.world_size(),
        )

    @hookimpl
    def torchplug_wrap_module(self, trainer: Trainer, module: nn.Module) -> nn.Module:
        if self.sync_module_states and trainer.world_size > 1:
            import torch_xla.core.xla_model as xm

            xm.broadcast_master_param(module)
        return module

    @hookimpl
    def torchplug_setup_dataloader(self, trainer: Trainer, dataloader: DataLoader, stage: str) -> Any:
        if trainer.world_size == 1 or not trainer.use_distributed_sampler:
            return dataloader
        loader = _data.with_distributed_sampler(dataloader, trainer.world_size, trainer.global_rank)
        if stage == "fit":
            self._samplers.append(loader.sampler)
        return loader

    @hookimpl
    def torchplug_on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for sampler in self._samplers:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    # ------------------------------------------------------------------------------------------------ step
    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        if trainer.world_size == 1:
            return ops
        import torch_xla.core.xla_model as xm

        prepare_gradients = ops.prepare_gradients

        def reduce_then_prepare(optimizer: Optimizer) -> None:
            # Part of the step's compiled graph, where xm.optimizer_step would put it: before clipping.
            xm.reduce_gradients(optimizer)
            prepare_gradients(optimizer)

        ops.prepare_gradients = reduce_then_prepare
        return ops

    # ------------------------------------------------------------------------------------------------ collectives
    @hookimpl
    def torchplug_all_reduce(self, trainer: Trainer, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if op not in _REDUCE_OPS:
            raise MisconfigurationError(f"all_reduce op={op!r}: use 'mean', 'sum', 'max' or 'min'")
        if trainer.world_size == 1:
            return tensor
        import torch_xla.core.xla_model as xm

        value = tensor if tensor.device.type == "xla" else tensor.to(trainer.root_device)
        scale = 1.0 / trainer.world_size if op == "mean" else 1.0
        if op == "mean" and not value.is_floating_point():
            value = value.float()
        reduced = xm.all_reduce(_REDUCE_OPS[op], value, scale=scale)
        return reduced if tensor.device.type == "xla" else reduced.to(tensor.device)

    @hookimpl
    def torchplug_barrier(self, trainer: Trainer, name: str) -> bool:
        if trainer.world_size > 1:
            import torch_xla.core.xla_model as xm

            xm.rendezvous(name or "torchplug.barrier")
        return True

    @hookimpl
    def torchplug_broadcast(self, trainer: Trainer, obj: Any, src: int) -> tuple[Any]:
        if trainer.world_size == 1:
            return (obj,)
        import torch_xla.core.xla_model as xm

        payloads = xm.xla_rendezvous(
            pickle.dumps(obj) if trainer.global_rank == src else b"", tag="torchplug.broadcast"
        )
        return (pickle.loads(payloads[src]),)
