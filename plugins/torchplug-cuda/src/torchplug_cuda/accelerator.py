"""The CUDA accelerator: ``Trainer(accelerator="gpu", devices=...)`` computes on NVIDIA GPUs.

The user never calls ``.cuda()``: the module and its buffers go to ``cuda:<devices[local_rank]>``, every batch
follows it (non-blocking), and ``self.device`` names that GPU in every hook. Which GPUs: ``devices`` as parsed by
the core (``2``, ``-1``, ``[1, 3]``, ``"1, 3"``), or, with ``auto_select_gpus=True``, the first GPUs that no other
process is using.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import torch

from torchplug import MisconfigurationError, StepOps, hookimpl
from torchplug.accelerators import Accelerator
from torchplug.utilities import batch_mover, parse_devices
from torchplug_cuda import _gpus
from torchplug_cuda._memory import MODES, memory_metrics
from torchplug_cuda._select import pick_free_gpus

if TYPE_CHECKING:
    from torchplug.trainer import Trainer

log = logging.getLogger(__name__)

#: The key of the root device's CUDA generator among a rank's random generator states (``checkpoint["ranks"][r]
#: ["rng_states"]``), saved and restored together with the host's generators.
RNG_KEY = "torch.cuda"

#: Set by the process that ran ``auto_select_gpus`` (``"<pid>|<devices>|<ids>"``) so that the processes it
#: launches use the same GPUs instead of choosing again while their siblings start using some.
AUTO_SELECTED_ENV = "TORCHPLUG_CUDA_AUTO_SELECTED"


def _cuda_device_count() -> int:
    """How many GPUs this process sees (``CUDA_VISIBLE_DEVICES`` applied), without initialising CUDA.

    The plugin's only question to torch about the number of GPUs: tests replace this function to play a machine
    with N GPUs. ``torch.cuda.device_count`` asks NVML first, so forking stays safe after it.
    """
    if not torch.backends.cuda.is_built():
        return 0
    return torch.cuda.device_count()


class CUDAAccelerator(Accelerator):
    """NVIDIA GPUs through CUDA (names ``cuda`` and ``gpu``).

    Args:
        auto_select_gpus: with ``devices=k``, use the first k GPUs that no other process is using (see
            :func:`torchplug_cuda._select.busy_reason`) instead of GPUs 0..k-1; fail when fewer are free. With
            ``-1`` or ``"auto"`` every GPU must be free.
        log_gpu_memory: ``"all"`` logs the memory used on each GPU of the run, ``"min_max"`` the least and most,
            at the logging interval. Reading it takes an NVML call (or an nvidia-smi run), so it slows training.
    """

    device_type = "cuda"
    priority = 100

    def __init__(self, auto_select_gpus: bool = False, log_gpu_memory: str | None = None) -> None:
        if not isinstance(auto_select_gpus, bool):
            raise MisconfigurationError(f"auto_select_gpus={auto_select_gpus!r}: expected True or False")
        if log_gpu_memory is not None and log_gpu_memory not in MODES:
            raise MisconfigurationError(
                f"log_gpu_memory={log_gpu_memory!r}: expected 'all' (memory used on each GPU), 'min_max' (the "
                "least and most across GPUs) or None"
            )
        if _cuda_device_count() == 0:
            raise MisconfigurationError(_no_gpu_message())
        self.auto_select_gpus = auto_select_gpus
        self.log_gpu_memory = log_gpu_memory
        self._holds_nvml = False

    @classmethod
    def is_available(cls) -> bool:
        return _cuda_device_count() > 0

    @classmethod
    def device_count(cls) -> int:
        return _cuda_device_count()

    # ---------------------------------------------------------------------------------------- selection
    @hookimpl
    def torchplug_select_devices(self, devices: Any, device_count: int | None, device_type: str) -> list[int] | None:
        if not self.auto_select_gpus:
            return None  # the core parses devices
        return self._auto_select(devices)

    @hookimpl
    def torchplug_configure(self, trainer: Trainer) -> None:
        if self.log_gpu_memory:
            self._check_memory_source(trainer.device_ids)
        if trainer.deterministic and trainer.benchmark:
            warnings.warn(
                "deterministic=True with benchmark=True: cuDNN's autotuner may pick a different convolution "
                "algorithm on each run, so results can still differ. Leave benchmark unset for reproducible runs",
                UserWarning,
                stacklevel=2,
            )

    def _auto_select(self, requested: Any) -> list[int]:
        if isinstance(requested, (list, tuple)) or (isinstance(requested, str) and "," in requested):
            raise MisconfigurationError(
                f"auto_select_gpus=True chooses which GPUs to use, but devices={requested!r} already names them. "
                "Give a number of GPUs (devices=2, or -1 for all of them) or set auto_select_gpus=False"
            )
        # devices=k, "k", -1 or "auto" all parse to a count (every GPU for -1 and "auto"); only which GPUs changes.
        count = len(parse_devices(requested, _cuda_device_count(), "cuda"))
        key = repr(requested)
        inherited = os.environ.get(AUTO_SELECTED_ENV, "").split("|")
        if len(inherited) == 3 and inherited[0] != str(os.getpid()) and inherited[1] == key:
            return [int(i) for i in inherited[2].split(",")]  # launched by the process that chose
        try:
            gpus = _gpus.visible_gpus(_gpus.query_gpus())
        except _gpus.GPUQueryError as err:
            raise MisconfigurationError(f"auto_select_gpus=True needs to see which GPUs are busy: {err}") from err
        if len(gpus) != _cuda_device_count():
            raise MisconfigurationError(
                f"auto_select_gpus=True cannot tell which GPUs torch sees: the driver lists {len(gpus)} visible "
                f"GPUs (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) but torch sees "
                f"{_cuda_device_count()}. Choose GPUs with devices=[...] instead"
            )
        chosen = pick_free_gpus(count, gpus, {os.getpid()}, requested)
        os.environ[AUTO_SELECTED_ENV] = f"{os.getpid()}|{key}|{','.join(map(str, chosen))}"
        log.info("auto_select_gpus: using GPUs %s (free of other processes)", chosen)
        return chosen

    def _check_memory_source(self, device_ids: list[int]) -> None:
        """Fail at construction, not at the first logging interval, when memory cannot be read."""
        try:
            gpus = _gpus.visible_gpus(_gpus.query_gpus(processes=False))
        except _gpus.GPUQueryError as err:
            raise MisconfigurationError(f"log_gpu_memory={self.log_gpu_memory!r}: {err}") from err
        missing = [i for i in device_ids if i >= len(gpus)]
        if missing:
            raise MisconfigurationError(
                f"log_gpu_memory={self.log_gpu_memory!r}: the driver reports {len(gpus)} visible GPUs "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}), so GPUs {missing} of "
                f"devices={device_ids} cannot be read. Set CUDA_DEVICE_ORDER=PCI_BUS_ID and plain indices in "
                "CUDA_VISIBLE_DEVICES, or turn log_gpu_memory off"
            )

    # ---------------------------------------------------------------------------------------- setup
    @hookimpl
    def torchplug_root_device(self, trainer: Trainer) -> torch.device:
        local_rank, device_ids = trainer.local_rank, trainer.device_ids
        if local_rank >= len(device_ids):
            raise MisconfigurationError(
                f"devices={device_ids} gives {len(device_ids)} GPU(s) per node, but this process has local rank "
                f"{local_rank}: run at most {len(device_ids)} processes per node, or list more GPUs in devices"
            )
        device = torch.device("cuda", device_ids[local_rank])
        # Kernels launched without an explicit device, NCCL and torch.cuda.* calls all use the current device.
        torch.cuda.set_device(device)
        return device

    @hookimpl
    def torchplug_setup_environment(self, trainer: Trainer) -> None:
        _set_cuda_flags(trainer.benchmark, trainer.deterministic)

    # ---------------------------------------------------------------------------------------- step
    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer: Trainer) -> Generator[None, StepOps, StepOps]:
        ops = yield
        # non_blocking is safe for every copy onto the GPU: from pinned memory it overlaps with compute, from
        # pageable memory the driver stages it before returning. A blocking copy would instead synchronise the
        # stream on every batch.
        ops.to_device = batch_mover(trainer.root_device, non_blocking=True)
        return ops

    # ---------------------------------------------------------------------------------------- random generators
    @hookimpl
    def torchplug_get_rng_states(self, trainer: Trainer) -> dict[str, Any] | None:
        # No root device: this process did not set up a run (the calling process of a spawned one) and has no GPU
        # generator of the run to save.
        if trainer.root_device is None or not torch.cuda.is_initialized():
            return None
        return {RNG_KEY: torch.cuda.get_rng_state(trainer.root_device)}

    @hookimpl
    def torchplug_set_rng_states(self, trainer: Trainer, states: dict[str, Any]) -> None:
        state = states.get(RNG_KEY)
        if state is not None and trainer.root_device is not None:
            torch.cuda.set_rng_state(state, trainer.root_device)

    @hookimpl
    def torchplug_metrics(self, trainer: Trainer) -> dict[str, float] | None:
        if not self.log_gpu_memory or not trainer.is_global_zero:
            return None
        if not self._holds_nvml:
            self._holds_nvml = _gpus.hold_nvml()
        gpus = _gpus.visible_gpus(_gpus.query_gpus(processes=False))
        return memory_metrics(self.log_gpu_memory, gpus, trainer.device_ids)

    # ---------------------------------------------------------------------------------------- teardown
    @hookimpl
    def torchplug_teardown(self, trainer: Trainer) -> None:
        if self._holds_nvml:
            _gpus.release_nvml()
            self._holds_nvml = False
        if torch.cuda.is_initialized():
            # Hand cached blocks back to the driver, for the next run in this process and for other processes.
            torch.cuda.empty_cache()


def _set_cuda_flags(benchmark: bool | None, deterministic: bool | str | None) -> None:
    """``benchmark`` → cuDNN autotuning; ``deterministic`` → cuDNN and cuBLAS kernels that repeat bit for bit.

    The core calls ``torch.use_deterministic_algorithms``; cuBLAS also needs a fixed workspace, chosen through
    ``CUBLAS_WORKSPACE_CONFIG`` before its first call (a value the user set is kept).
    """
    if deterministic:  # True or "warn"
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
    if benchmark is not None:
        torch.backends.cudnn.benchmark = bool(benchmark)
    elif deterministic:
        torch.backends.cudnn.benchmark = False


def _no_gpu_message() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.backends.cuda.is_built():
        why = f"this torch ({torch.__version__}) is a CPU-only build"
        fix = "install a CUDA build of torch on a machine with an NVIDIA GPU"
    elif visible is not None:
        why = f"no GPU is visible with CUDA_VISIBLE_DEVICES={visible!r}"
        fix = "list GPUs that exist in CUDA_VISIBLE_DEVICES (or unset it)"
    else:
        why = "torch finds no GPU (no NVIDIA GPU, or its driver is not loaded)"
        fix = "check that `nvidia-smi` lists a GPU"
    return (
        f"accelerator='gpu' (also named 'cuda') needs an NVIDIA GPU, but torch.cuda.is_available() is False: "
        f"{why}. Use accelerator='cpu' (or 'auto', which picks the best one available), or {fix}"
    )
