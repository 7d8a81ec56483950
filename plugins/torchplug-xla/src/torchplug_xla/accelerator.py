"""``accelerator="tpu"`` (alias ``"xla"``): TPUs, or any PJRT device, through PyTorch/XLA's lazy tensors.

XLA records operations and compiles them into one graph when the graph is cut. This accelerator cuts it once per
batch, whatever the strategy: when the core has finished the batch (after the optimizer step and ``zero_grad``,
before callbacks and logging read anything), so a steady-state training step is one compiled graph whose outputs
are the new parameters and the logged values, executed without a device-to-host transfer.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.accelerators import Accelerator
from torchplug.utilities import apply_to_collection
from torchplug_xla import _runtime

if TYPE_CHECKING:

    from torchplug import Trainer

log = logging.getLogger("torchplug.xla")

#: The key of the XLA device's random generator among a rank's generator states (``checkpoint["ranks"][r]
#: ["rng_states"]``), saved and restored with the host's.
RNG_KEY = "torch_xla"

# Precisions with float16 arithmetic, which TPUs do not have: they run as bfloat16 here.
_FLOAT16_PRECISIONS = {"16-mixed": "bf16-mixed", "16": "bf16-mixed", "mixed": "bf16-mixed"}


class XLAAccelerator(Accelerator):
    """Runs on XLA devices: TPU cores, or the XLA CPU/GPU devices that ``PJRT_DEVICE`` selects.

    Available when torch_xla is installed and either ``PJRT_DEVICE`` is set or TPU chips are attached; neither
    check imports torch_xla. ``devices=[k]`` runs on device ``k``.
    """

    device_type = "xla"
    priority = 50

    @classmethod
    def is_available(cls) -> bool:
        return _runtime.is_installed() and _runtime.count_devices() > 0

    @classmethod
    def device_count(cls) -> int:
        return _runtime.count_devices() if _runtime.is_installed() else 0

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Versions, ``PJRT_DEVICE`` and the device count, for ``torchplug env``."""
        return _runtime.describe()

    # ------------------------------------------------------------------------------------------------ selection
    def __init__(self) -> None:
        # Selected: torch_xla must be importable and a device configured, before the core counts devices.
        _runtime.import_torch_xla("accelerator='tpu'")
        if _runtime.count_devices() == 0:
            raise MisconfigurationError(
                "accelerator='tpu': no XLA device is configured here (no TPU chips found, PJRT_DEVICE unset). On a "
                "TPU VM install libtpu (`pip install 'torchplug-xla[tpu]'`); to run XLA on this machine's CPU set "
                "PJRT_DEVICE=CPU (and CPU_NUM_DEVICES=N for N devices)"
            )

    @hookimpl
    def torchplug_default_strategy(self, device_ids: list[int], num_nodes: int) -> str:
        return "single_xla" if len(device_ids) == 1 and num_nodes == 1 else "xla"

    @hookimpl
    def torchplug_precision_name(self, precision: str) -> str | None:
        replacement = _FLOAT16_PRECISIONS.get(precision)
        if replacement is None:
            return None
        warnings.warn(
            f"precision={precision!r} on an XLA accelerator: TPUs have no float16 arithmetic, "
            f"so this runs as precision={replacement!r} (bfloat16 autocast, no loss scaling). Pass "
            f"precision={replacement!r} to silence this notice.",
            UserWarning,
            stacklevel=2,
        )
        return replacement

    # ------------------------------------------------------------------------------------------------ setup
    @hookimpl
    def torchplug_root_device(self, trainer: Trainer) -> torch.device:
        torch_xla = _runtime.import_torch_xla(f"accelerator={trainer.accelerator_name!r}")
        import torch_xla.runtime as xr

        if trainer.world_size > 1 or xr.is_spmd():
            # One replica per process (xmp.spawn): its own device is the default one. SPMD: the virtual device.
            return torch_xla.device()
        return torch_xla.device(_runtime.pin_one_device(trainer.device_ids[0]))

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        # The device's generator (dropout on XLA) follows torch's: seeded from the host generator, so that runs
        # from one seed_everything() seed draw the same masks, as torch.manual_seed gives CUDA.
        import torch_xla.core.xla_model as xm

        xm.set_rng_state(int(torch.randint(0, 2**62, (1,)).item()), device=trainer.root_device)

    @hookimpl
    def torchplug_get_rng_states(self, trainer: Trainer) -> dict[str, Any]:
        import torch_xla.core.xla_model as xm

        return {RNG_KEY: int(xm.get_rng_state(device=trainer.root_device))}

    @hookimpl
    def torchplug_set_rng_states(self, trainer: Trainer, states: dict[str, Any]) -> None:
        import torch_xla.core.xla_model as xm

        if RNG_KEY in states:
            xm.set_rng_state(int(states[RNG_KEY]), device=trainer.root_device)

    # ------------------------------------------------------------------------------------------------ step
    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        device = trainer.root_device
        ops.to_device = lambda batch: send_to_device(batch, device)
        ops.on_batch_end = _sync_after_batch
        return ops

    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        # Let queued executions finish before the process moves on (or exits); never raise here. No graph cut:
        # what is still pending (epoch-end aggregates) is computed when read, and cutting would compile it again.
        if not _runtime.runtime_initialized():
            return
        try:
            import torch_xla.core.xla_model as xm

            xm.wait_device_ops()
        except Exception as err:  # teardown after a failed step must not hide that failure
            log.warning("torchplug-xla: waiting for the device at teardown failed: %s", err)


def _sync_after_batch(stage: str, batch_idx: int) -> None:
    sync()


def sync() -> None:
    """Cut the graph here: compile (or reuse) and run everything recorded since the last cut."""
    import torch_xla

    torch_xla.sync()


def send_to_device(
    batch: Any, device: torch.device, sharding: Callable[[torch.Tensor], Any] | None = None
) -> Any:
    """Move every tensor of a nested batch to ``device``, the CPU ones in a single host-to-device transfer.

    ``sharding(tensor)`` may give an ``xs.ShardingSpec`` for a CPU tensor (SPMD), which then arrives sharded
    rather than being copied whole to one device and resharded.
    """
    import torch_xla.core.xla_model as xm

    host: dict[int, torch.Tensor] = {}

    def collect(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu":
            host[id(tensor)] = tensor
        return tensor

    if isinstance(batch, torch.Tensor):
        collect(batch)
    else:
        apply_to_collection(batch, torch.Tensor, collect)
    moved: dict[int, torch.Tensor] = {}
    if host:
        groups: dict[int, tuple[Any, list[torch.Tensor]]] = {}  # specs are not hashable: keyed by identity
        for tensor in host.values():
            spec = sharding(tensor) if sharding is not None else None
            groups.setdefault(id(spec), (spec, []))[1].append(tensor)
        for spec, tensors in groups.values():
            for before, after in zip(
                tensors, xm.send_cpu_data_to_device(tensors, device, input_sharding=spec), strict=True
            ):
                moved[id(before)] = after

    def move(tensor: torch.Tensor) -> torch.Tensor:
        found = moved.get(id(tensor))
        return found if found is not None else tensor.to(device)

    if isinstance(batch, torch.Tensor):
        return move(batch)
    return apply_to_collection(batch, torch.Tensor, move)
