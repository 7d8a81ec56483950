"""PyTorch/XLA's devices, found without importing it; torch_xla itself is imported only when a run needs it.

Importing ``torch_xla`` takes seconds, and starting its runtime in the launching process would keep a TPU's chips
from the processes that ``xmp.spawn`` starts, so device counts here come from the environment (``PJRT_DEVICE``,
``CPU_NUM_DEVICES``, ``GPU_NUM_DEVICES``, ``TPU_VISIBLE_CHIPS``) and from the PCI bus, never from the runtime.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import torch

from torchplug import MisconfigurationError

INSTALL_HINT = (
    "install it with `pip install 'torchplug-xla[tpu]'` on a TPU VM (torch, torch-xla and libtpu), or "
    "`pip install 'torchplug-xla[xla]'` for XLA on CPU or GPU. torch and torch-xla versions must match exactly "
    "(torch-xla 2.9.0 needs torch 2.9.0; a torch-xla built for another torch fails with 'undefined symbol')"
)

PCI_DEVICES = "/sys/bus/pci/devices"
_GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips, and how many XLA devices each chip shows (v2 and v3 have two TensorCores that
# PJRT exposes separately; v4 and later chips are one device each).
_TPU_PCI_DEVICES = {"0x0027": 2, "0x005e": 1, "0x0062": 1, "0x0063": 1, "0x006f": 1, "0x0076": 1}

# {device index: ordinal in this process} once pin_one_device restricted this process to one TPU chip
_pinned: dict[int, int] = {}

#: The launching process's device count, for processes that see only part of the host (see count_devices).
HOST_DEVICES = "TORCHPLUG_XLA_HOST_DEVICES"


def is_installed() -> bool:
    """Whether a ``torch_xla`` package is importable, found without importing it."""
    return importlib.util.find_spec("torch_xla") is not None


def import_torch_xla(what: str) -> ModuleType:
    """``import torch_xla``, or raise a :class:`MisconfigurationError` saying how to get a working one."""
    try:
        import torch_xla
    except Exception as err:  # a torch-xla built for another torch fails with ImportError or OSError
        if not is_installed():
            problem = "PyTorch/XLA (the torch-xla package) is not installed"
        else:
            problem = (
                f"torch-xla {_version('torch-xla')} failed to import with torch {torch.__version__} "
                f"({type(err).__name__}: {err})"
            )
        raise MisconfigurationError(f"{what} needs PyTorch/XLA: {problem}; {INSTALL_HINT}") from err
    return torch_xla


def _version(distribution: str) -> str:
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return "?"


def tpu_chips() -> list[str]:
    """PCI device ids of the TPU chips attached to this host (empty elsewhere)."""
    chips = []
    for vendor_file in glob.glob(os.path.join(PCI_DEVICES, "*", "vendor")):
        try:
            if Path(vendor_file).read_text().strip() != _GOOGLE_PCI_VENDOR:
                continue
            device_id = (Path(vendor_file).parent / "device").read_text().strip()
        except OSError:
            continue
        if device_id in _TPU_PCI_DEVICES:
            chips.append(device_id)
    return chips


def device_type() -> str | None:
    """The PJRT device type a run would use: ``PJRT_DEVICE`` when set, ``TPU`` when chips are attached, else None.

    torch_xla itself falls back to ``PJRT_DEVICE=CPU`` when nothing is configured; torchplug does not treat that
    fallback as an accelerator, so ``accelerator="auto"`` never picks XLA on a plain CPU machine.
    """
    configured = os.environ.get("PJRT_DEVICE", "").strip()
    if configured:
        return configured.split("_")[0].upper()
    return "TPU" if tpu_chips() else None


def cores_per_chip() -> int:
    chips = tpu_chips()
    return _TPU_PCI_DEVICES[chips[0]] if chips else 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise MisconfigurationError(f"the environment variable {name}={value!r} must be an integer") from None


def count_devices() -> int:
    """XLA devices on this host as the runtime would see them, without starting the runtime (0 when none).

    Inside a replica started by ``xmp.spawn``, or after :func:`pin_one_device`, the process sees only its own
    chip; the count is still the host's (``TORCHPLUG_XLA_HOST_DEVICES``), so a trainer rebuilt there from the
    same arguments (``devices=8``) validates as it did in the launching process.
    """
    host = _env_int(HOST_DEVICES)
    if host is not None:
        return host
    kind = device_type()
    if kind is None:
        return 0
    if kind == "CPU":
        count = _env_int("CPU_NUM_DEVICES")
        return 1 if count is None else count
    if kind == "TPU":
        visible = os.environ.get("TPU_VISIBLE_CHIPS", "").strip()
        chips = len([c for c in visible.split(",") if c.strip()]) if visible else len(tpu_chips())
        return chips * cores_per_chip()
    if kind in ("CUDA", "GPU"):
        count = _env_int("GPU_NUM_DEVICES")
        return torch.cuda.device_count() if count is None else count
    # Other PJRT plugins (NEURON, ...): their own <KIND>_NUM_DEVICES, else one device.
    count = _env_int(f"{kind}_NUM_DEVICES")
    return 1 if count is None else count


def runtime_initialized() -> bool:
    """Whether this process already started the XLA runtime (then device visibility can no longer change)."""
    if not is_installed():
        return False
    import torch_xla

    return bool(torch_xla._XLAC._xla_runtime_is_initialized())


def pin_one_device(index: int) -> int:
    """Before the runtime starts, give this process only the TPU chip holding device ``index``.

    Returns the ordinal of device ``index`` inside this process. On a TPU host a single-device run would otherwise
    open every chip (and keep other jobs off them), and ``xmp.spawn(nprocs=1)`` would open chip 0 whatever
    ``devices=[k]`` asked for. Elsewhere (CPU, GPU), after the runtime started, or when the user set
    ``TPU_VISIBLE_CHIPS`` themselves, every device stays visible and the ordinal is ``index`` itself.
    """
    if _pinned:
        ((pinned_index, ordinal),) = _pinned.items()
        if index != pinned_index:
            raise MisconfigurationError(
                f"devices=[{index}]: this process already runs on TPU device {pinned_index} alone (PyTorch/XLA "
                "opens its chips once per process); use that device, or run this one in another process"
            )
        return ordinal
    if device_type() != "TPU" or "TPU_VISIBLE_CHIPS" in os.environ or runtime_initialized():
        return index
    cores = cores_per_chip()
    os.environ.setdefault(HOST_DEVICES, str(count_devices()))
    os.environ["TPU_VISIBLE_CHIPS"] = str(index // cores)
    os.environ.setdefault("TPU_CHIPS_PER_PROCESS_BOUNDS", "1,1,1")
    os.environ.setdefault("TPU_PROCESS_BOUNDS", "1,1,1")
    _pinned[index] = index % cores
    return _pinned[index]


def describe() -> dict[str, str]:
    """What ``torchplug env`` shows for XLA: versions, the configured device type and the device count."""
    info = {
        "torch": torch.__version__,
        "torch-xla": _version("torch-xla") if is_installed() else "not installed",
    }
    kind = device_type()
    info["PJRT_DEVICE"] = os.environ.get("PJRT_DEVICE", "") or (
        f"unset ({kind} detected)" if kind else "unset"
    )
    info["xla devices"] = str(count_devices())
    chips = tpu_chips()
    if chips:
        info["tpu chips"] = f"{len(chips)} (PCI id {chips[0]}, {cores_per_chip()} device(s) per chip)"
    return info
