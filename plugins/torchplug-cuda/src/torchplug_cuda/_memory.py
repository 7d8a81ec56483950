"""``log_gpu_memory``: memory used per GPU, as metrics named the way Lightning named them."""

from __future__ import annotations

from collections.abc import Sequence

from torchplug_cuda._gpus import GPUState

MODES = ("all", "min_max")


def memory_metrics(mode: str, gpus: Sequence[GPUState], device_ids: Sequence[int]) -> dict[str, float]:
    """``"all"``: MiB used on each GPU of the run, keyed ``gpu_id: <i>/memory.used (MB)`` with ``i`` the CUDA
    index the user chose; ``"min_max"``: ``min_gpu_mem`` and ``max_gpu_mem`` across those GPUs.

    The numbers are the driver's (what nvidia-smi shows), so they include every process on the GPU and
    PyTorch's cached but unused blocks; ``torch.cuda.memory_allocated`` is the figure for tensors alone.
    """
    used = {i: float(gpus[i].memory_used_mib) for i in device_ids}
    if mode == "all":
        return {f"gpu_id: {i}/memory.used (MB)": mib for i, mib in used.items()}
    return {"min_gpu_mem": min(used.values()), "max_gpu_mem": max(used.values())}
