"""One parser for ``devices`` on every accelerator (the seed table)."""

from __future__ import annotations

from typing import Any

from torchplug._errors import MisconfigurationError

_FORMS = "an int (3 = the first three, -1 = all), a list of indices ([1, 3]), a string ('3', '1, 3', '-1') or 'auto'"


def parse_devices(devices: Any, device_count: int | None, accelerator: str = "device") -> list[int]:
    """Device indices for ``devices``; ``device_count=None`` means any number (the CPU: N processes).

    ``3`` → [0, 1, 2]; ``-1``/``"-1"`` → all; ``[1, 3]``/``"1, 3"`` → [1, 3]; ``"3"`` → [0, 1, 2];
    ``"auto"`` → all on an accelerator with a count, one process on the CPU.
    """
    given = devices
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return list(range(device_count)) if device_count else [0]
        try:
            if "," in text:
                devices = [int(part) for part in text.split(",") if part.strip()]
            else:
                devices = int(text)
        except ValueError:
            raise MisconfigurationError(f"devices={given!r} is not understood; use {_FORMS}") from None
    if isinstance(devices, bool) or devices is None:
        raise MisconfigurationError(f"devices={given!r} is not understood; use {_FORMS}")
    if isinstance(devices, int):
        if devices == -1:
            if device_count is None:
                import os

                return list(range(os.cpu_count() or 1))
            if device_count == 0:
                raise MisconfigurationError(f"devices={given!r}: this machine has no {accelerator} devices")
            return list(range(device_count))
        if devices <= 0:
            raise MisconfigurationError(f"devices={given!r} must be a positive number of devices, -1 or 'auto'")
        indices = list(range(devices))
    elif isinstance(devices, (list, tuple)):
        if not devices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in devices):
            raise MisconfigurationError(f"devices={given!r}: a list must hold non-negative device indices, e.g. [0, 2]")
        if len(set(devices)) != len(devices):
            raise MisconfigurationError(f"devices={given!r} lists a device twice")
        indices = list(devices)
    else:
        raise MisconfigurationError(f"devices={given!r} is not understood; use {_FORMS}")
    if device_count is not None:
        missing = [i for i in indices if i >= device_count]
        if missing:
            raise MisconfigurationError(
                f"devices={given!r}: requested {accelerator} devices {indices} but this machine has "
                f"{list(range(device_count))}"
            )
    return indices
