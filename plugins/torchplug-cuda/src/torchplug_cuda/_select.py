"""``auto_select_gpus``: which GPUs no other process is using, in CUDA's numbering."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from torchplug import MisconfigurationError
from torchplug_cuda._gpus import GPUState


def busy_reason(gpu: GPUState, own_pids: Collection[int]) -> str | None:
    """Why another process's work makes ``gpu`` unusable for us, or ``None`` when it is free.

    A GPU is busy when a process other than ours holds a context on it; in ``Exclusive_Process`` mode such a GPU
    would refuse us outright, in ``Default`` mode we would share its memory and compute. ``Prohibited`` GPUs
    accept no process at all.
    """
    if gpu.compute_mode == "Prohibited":
        return "is in Prohibited compute mode, so no process may use it"
    others = [pid for pid in gpu.pids if pid not in own_pids]
    if not others:
        return None
    shown = ", ".join(map(str, others[:5])) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    mode = " (exclusive-process mode)" if gpu.compute_mode.startswith("Exclusive") else ""
    return f"is used by process {shown}{mode}"


def pick_free_gpus(count: int, gpus: Sequence[GPUState], own_pids: Collection[int], requested: object) -> list[int]:
    """CUDA ordinals of the first ``count`` GPUs that no other process uses.

    ``gpus[i]`` is ``cuda:i`` (see :func:`torchplug_cuda._gpus.visible_gpus`); ``requested`` is the ``devices``
    value as the user gave it, for the error message.
    """
    free: list[int] = []
    busy: list[str] = []
    for ordinal, gpu in enumerate(gpus):
        reason = busy_reason(gpu, own_pids)
        if reason is None:
            free.append(ordinal)
        else:
            busy.append(f"GPU {ordinal} ({gpu.name}, nvidia-smi index {gpu.index}) {reason}")
    if len(free) >= count:
        return free[:count]
    asked = f"{count} free GPU{'s' * (count != 1)}"
    raise MisconfigurationError(
        f"auto_select_gpus=True with devices={requested!r} asked for {asked}, but only {len(free)} of the "
        f"{len(gpus)} visible GPUs {'is' if len(free) == 1 else 'are'} free{f' ({free})' if free else ''}. "
        + "; ".join(busy)
        + (". " if busy else ". ")
        + (
            f"Ask for at most {len(free)} (devices={len(free)}), wait for the other jobs, or choose GPUs "
            "yourself with devices=[...] and auto_select_gpus=False"
            if free
            else "Wait for the other jobs, or choose GPUs yourself with devices=[...] and auto_select_gpus=False"
        )
    )
