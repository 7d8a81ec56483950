"""``ModelSummary``: a table of the model's layers and parameter counts, printed when ``fit`` starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class ModelSummary(Callback):
    """Print :func:`summarize` of the model at fit start, on global rank 0 (``enable_model_summary=False`` to skip).

    ``max_depth`` is how many levels of submodules get a row: 1 shows the model's direct children, -1 every
    submodule, 0 prints nothing.
    """

    def __init__(self, max_depth: int = 1) -> None:
        _check_depth(max_depth)
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.max_depth != 0 and trainer.is_global_zero:
            print(summarize(pl_module, self.max_depth), flush=True)


def summarize(module: nn.Module, max_depth: int = 1) -> str:
    """A table of ``module``'s submodules (name, type, parameters, trainable parameters, size) and totals.

    Parameters shared by several submodules count once in the totals. Sizes are the bytes of parameters (and, in
    the totals, buffers) in their current dtype, in MB (10^6 bytes). Parameters of lazy modules that are not yet
    initialised cannot be counted and show as ``?``.
    """
    _check_depth(max_depth)
    rows: list[tuple[str, ...]] = []
    if max_depth != 0:
        for index, (name, child) in enumerate(_submodules(module, max_depth)):
            params = list(child.parameters())
            total, known = _count(params)
            trainable, _ = _count([p for p in params if p.requires_grad])
            size = sum(p.numel() * p.element_size() for p in params if not _is_lazy(p))
            mode = "train" if child.training else "eval"
            rows.append(
                (
                    str(index), name, type(child).__name__,
                    _human(total) + ("" if known else " + ?"), _human(trainable), f"{size / 1e6:,.3f}", mode,
                )
            )  # fmt: skip

    params = _unique(module.parameters())
    total, known = _count(params)
    trainable, _ = _count([p for p in params if p.requires_grad])
    buffers = _unique(module.buffers())
    size = sum(t.numel() * t.element_size() for t in params + buffers if not _is_lazy(t))

    lines: list[str] = []
    if rows:
        header = ("", "Name", "Type", "Params", "Trainable", "Size (MB)", "Mode")
        numeric = {3, 4, 5}
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row: tuple[str, ...]) -> str:
            cells = [cell.rjust(w) if i in numeric and row is not header else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
            return " | ".join(cells).rstrip()

        lines.append(line(header))
        lines.append("-" * len(lines[0]))
        lines.extend(line(row) for row in rows)
        lines.append("-" * len(lines[0]))
    unknown = "" if known else " (+ uninitialised lazy parameters)"
    totals = [
        (_human(trainable), "Trainable params"),
        (_human(total - trainable), "Non-trainable params"),
        (_human(total), f"Total params{unknown}"),
        (f"{size / 1e6:,.3f}", "Total estimated model size (MB), parameters and buffers"),
    ]
    width = max(len(value) for value, _ in totals)
    lines.extend(f"{value.ljust(width)}  {label}" for value, label in totals)
    return "\n".join(lines)


def _check_depth(max_depth: int) -> None:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
        raise MisconfigurationError(f"ModelSummary(max_depth={max_depth!r}): use an int >= 0, or -1 for every level")


def _submodules(module: nn.Module, max_depth: int) -> list[tuple[str, nn.Module]]:
    found = []
    for name, child in module.named_modules():
        if not name:
            continue
        depth = name.count(".") + 1
        if max_depth == -1 or depth <= max_depth:
            found.append((name, child))
    return found


def _is_lazy(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer)


def _unique(tensors: object) -> list[torch.Tensor]:
    seen: set[int] = set()
    unique = []
    for tensor in tensors:  # type: ignore[attr-defined]
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique.append(tensor)
    return unique


def _count(params: list[torch.Tensor]) -> tuple[int, bool]:
    """Number of elements, and whether every parameter could be counted."""
    known = all(not _is_lazy(p) for p in params)
    return sum(p.numel() for p in params if not _is_lazy(p)), known


def _human(count: float) -> str:
    """1234 -> '1.2 K', 5_000_000 -> '5.0 M'; counts below a thousand stay exact."""
    if count < 1000:
        return str(int(count))
    for unit in ("K", "M", "B", "T"):
        count /= 1000
        if count < 1000 or unit == "T":
            return f"{count:,.1f} {unit}"
    raise AssertionError("unreachable")


__all__ = ["ModelSummary", "summarize"]
