"""What the driver says about each GPU (memory used, compute mode, processes), read through NVML or nvidia-smi.

NVML and nvidia-smi number GPUs in PCI bus order and ignore ``CUDA_VISIBLE_DEVICES``; torch numbers the GPUs this
process can see. :func:`visible_gpus` maps one to the other the way the CUDA runtime does (indices or ``GPU-``
UUID prefixes, the list ending at the first entry that names no GPU). Like torch itself, it assumes CUDA's order is
PCI bus order, which ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` guarantees.

Nothing here initialises CUDA: forking or spawning worker processes stays safe after it runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from torchplug import MisconfigurationError

#: NVML's compute modes (``nvmlComputeMode_t``) and nvidia-smi's names for them.
COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


@dataclass(frozen=True)
class GPUState:
    """One physical GPU as the driver reports it, numbered as NVML and nvidia-smi number it."""

    index: int
    uuid: str
    name: str
    memory_used_mib: float
    memory_total_mib: float
    compute_mode: str = "Default"
    #: ids of the processes holding a context on this GPU (compute and graphics).
    pids: tuple[int, ...] = field(default=())


class GPUQueryError(RuntimeError):
    """Neither NVML nor nvidia-smi could tell us about the GPUs; the message says why for each."""


def query_gpus(processes: bool = True) -> list[GPUState]:
    """Every GPU of the machine, through NVML when its library loads, else through ``nvidia-smi``.

    ``processes=False`` leaves ``pids`` empty (one nvidia-smi call instead of two). Tests replace this function
    to play a machine with given GPUs, processes and memory.
    """
    try:
        return _query_nvml(processes)
    except Exception as nvml_error:  # pynvml raises its own NVMLError subclasses, or ImportError
        try:
            return _query_nvidia_smi(processes)
        except Exception as smi_error:
            raise GPUQueryError(
                f"cannot read the GPUs' state: NVML failed ({type(nvml_error).__name__}: {nvml_error}) and "
                f"nvidia-smi failed ({type(smi_error).__name__}: {smi_error}). Install the NVIDIA driver's NVML "
                "library (it comes with the driver) and `pip install nvidia-ml-py`, or put nvidia-smi on PATH"
            ) from smi_error


def hold_nvml() -> bool:
    """Keep NVML loaded until :func:`release_nvml` (its init is reference counted), so that queries at every
    logging interval do not load and unload the driver library each time. False when NVML is unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    return True


def release_nvml() -> None:
    try:
        import pynvml

        pynvml.nvmlShutdown()
    except Exception:
        pass


def _query_nvml(processes: bool) -> list[GPUState]:
    import pynvml

    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            pids: set[int] = set()
            listers = (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses)
            for lister in listers if processes else ():
                try:
                    pids.update(p.pid for p in lister(handle))
                except pynvml.NVMLError_NotSupported:
                    pass
            try:
                mode = COMPUTE_MODES.get(pynvml.nvmlDeviceGetComputeMode(handle), "Default")
            except pynvml.NVMLError_NotSupported:
                mode = "Default"
            gpus.append(
                GPUState(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_used_mib=memory.used / 2**20,
                    memory_total_mib=memory.total / 2**20,
                    compute_mode=mode,
                    pids=tuple(sorted(pids)),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _query_nvidia_smi(processes: bool) -> list[GPUState]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    gpus = _run(executable, "--query-gpu=index,uuid,name,memory.used,memory.total,compute_mode")
    apps = _run(executable, "--query-compute-apps=gpu_uuid,pid") if processes else ""
    return parse_nvidia_smi(gpus, apps)


def _run(executable: str, query: str) -> str:
    return subprocess.run(
        [executable, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def parse_nvidia_smi(gpu_csv: str, apps_csv: str) -> list[GPUState]:
    """Read the two CSV tables nvidia-smi prints (``--format=csv,noheader,nounits``) into :class:`GPUState`."""
    pids: dict[str, set[int]] = {}
    for line in apps_csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) >= 2 and cells[1].isdigit():
            pids.setdefault(cells[0], set()).add(int(cells[1]))
    gpus = []
    for line in gpu_csv.splitlines():
        if not line.strip():
            continue
        index, uuid, *name, used, total, mode = (c.strip() for c in line.split(","))
        gpus.append(
            GPUState(
                index=int(index),
                uuid=uuid,
                name=",".join(name),
                memory_used_mib=_number(used),
                memory_total_mib=_number(total),
                compute_mode=mode,
                pids=tuple(sorted(pids.get(uuid, ()))),
            )
        )
    return gpus


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:  # "[N/A]" on GPUs that do not report it
        return float("nan")


def visible_gpus(gpus: list[GPUState], cuda_visible_devices: str | None = None) -> list[GPUState]:
    """The GPUs this process sees, in CUDA's numbering: ``visible_gpus(...)[i]`` is ``cuda:i``.

    ``cuda_visible_devices`` defaults to the environment's ``CUDA_VISIBLE_DEVICES``. Follows the CUDA runtime:
    entries are indices or (prefixes of) ``GPU-`` UUIDs; the list stops at the first entry that names no GPU or
    repeats one; an empty value hides every GPU.
    """
    if cuda_visible_devices is None:
        cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cuda_visible_devices is None:
        return list(gpus)
    entries = [e.strip() for e in cuda_visible_devices.split(",")]
    if entries[0].startswith("MIG-"):
        raise MisconfigurationError(
            f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} names MIG instances; auto_select_gpus and "
            "log_gpu_memory read whole GPUs and cannot map MIG instances. Leave both off for this run"
        )
    by_uuid = entries[0].startswith("GPU-")
    chosen: list[GPUState] = []
    for entry in entries:
        if by_uuid:
            matches = [g for g in gpus if entry.startswith("GPU-") and g.uuid.startswith(entry)]
            gpu = matches[0] if len(matches) == 1 else None
        else:
            digits = entry[: len(entry) - len(entry.lstrip("0123456789"))]
            gpu = gpus[int(digits)] if digits and int(digits) < len(gpus) else None
        if gpu is None:
            break
        if gpu in chosen:  # the runtime treats a repeated GPU as an invalid list: no GPU at all
            return []
        chosen.append(gpu)
    return chosen
