"""``strategy="xla_spmd"``: data parallel as one program over every device, with PyTorch/XLA's SPMD partitioner.

One process drives all devices of the host. Parameters are replicated; each batch is split along its first
dimension over a one-dimensional device mesh (axis ``"data"``), and the XLA compiler partitions the step and
inserts the gradient all-reduce itself. This is the mode PyTorch/XLA recommends for many chips, and the one that
runs with several devices on the XLA CPU device too.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, StepOps, World, hookimpl
from torchplug.strategies import Strategy
from torchplug_xla import _runtime
from torchplug_xla.accelerator import send_to_device
from torchplug_xla.strategies._checks import require_xla_accelerator

if TYPE_CHECKING:
    from torchplug import Trainer


class XLASPMDStrategy(Strategy):
    """Splits every batch over all devices of the host along dimension 0; one process, one compiled program.

    The batch size of each dataloader is the global one, and should be a multiple of the device count: XLA pads
    an uneven split, which wastes the padding's compute. Tensors without a batch dimension (scalars) are
    replicated. Runs on one host (``num_nodes=1``).
    """

    # XLA's lazy tensors do not support inference mode (as in Lightning): evaluation runs under no_grad
    supports_inference_mode = False

    def __init__(self) -> None:
        self._mesh: Any = None
        self._specs: dict[int, Any] = {}

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        require_xla_accelerator(trainer)
        count = _runtime.count_devices()
        if trainer.num_nodes != 1:
            raise MisconfigurationError(
                f"strategy='xla_spmd' with num_nodes={trainer.num_nodes}: this strategy runs on one host; use "
                "strategy='xla' on a multi-host TPU pod"
            )
        if trainer.device_ids != list(range(count)):
            raise MisconfigurationError(
                f"strategy='xla_spmd' with devices={trainer.devices_arg!r} ({trainer.device_ids}): SPMD runs one "
                f"program over every device of the host ({count} here); use devices={count} or 'auto', or make "
                "fewer devices visible (TPU_VISIBLE_CHIPS, CPU_NUM_DEVICES) before starting Python"
            )
        if _runtime.runtime_initialized():
            import torch_xla.runtime as xr

            if not xr.is_spmd():  # switching now crashes the process (SIGSEGV) at the first step
                raise MisconfigurationError(
                    "strategy='xla_spmd' in a process whose XLA runtime already runs without SPMD (an earlier fit, "
                    "or tensors moved to the XLA device): PyTorch/XLA fixes the mode when its runtime starts. Run "
                    "xla_spmd in a new process, before anything else uses the XLA device"
                )

    @hookimpl
    def torchplug_world(self, trainer: Trainer) -> World:
        """One process; SPMD mode is switched on here, before the accelerator picks the (virtual) root device."""
        _runtime.import_torch_xla("strategy='xla_spmd'")
        import numpy as np
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        # Before any tensor reaches an XLA device: afterwards the runtime would have to replicate what exists.
        xr.use_spmd()
        count = xr.global_runtime_device_count()
        if count != len(trainer.device_ids):
            raise MisconfigurationError(
                f"strategy='xla_spmd': devices={trainer.devices_arg!r} selects {len(trainer.device_ids)} devices "
                f"but the XLA runtime sees {count}; set devices={count} or change the visible devices"
            )
        self._mesh = xs.Mesh(np.arange(count), (count,), ("data",))
        xs.set_global_mesh(self._mesh)
        self._specs = {}
        return World()

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        device = trainer.root_device
        ops.to_device = lambda batch: send_to_device(batch, device, sharding=self._batch_sharding)
        return ops

    def _batch_sharding(self, tensor: torch.Tensor) -> Any:
        """Shard dimension 0 over the mesh; replicate the other dimensions (and scalars)."""
        if tensor.dim() == 0:
            return None
        spec = self._specs.get(tensor.dim())
        if spec is None:
            import torch_xla.distributed.spmd as xs

            spec = xs.ShardingSpec(self._mesh, ("data",) + (None,) * (tensor.dim() - 1))
            self._specs[tensor.dim()] = spec
        return spec
