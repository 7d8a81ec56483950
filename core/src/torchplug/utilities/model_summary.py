"""A model's layers as a table: types, parameter counts, modes, and the in/out sizes of one example forward pass.

``summarize(model, max_depth)`` returns a :class:`ModelSummary`; ``str()`` of it is the table the ``ModelSummary``
callback prints at fit start. Lightning's ``lightning.pytorch.utilities.model_summary`` ports here by its import.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: Shown for a size that is not known: the layer did not run in the example forward pass, or its input is no tensor.
UNKNOWN_SIZE = "?"
#: The row for parameters that belong to no submodule (``self.scale = nn.Parameter(...)`` on the model itself).
LEFTOVER_PARAMS_NAME = "other params"
#: The cells of that row that have no meaning for it.
NOT_APPLICABLE = "n/a"

_LAZY_WARNING = (
    "The total number of parameters detected may be inaccurate because the model contains uninitialised lazy "
    "parameters (nn.LazyLinear, ...): run one forward pass first, or set `example_input_array` on the model."
)


class LayerSummary:
    """One submodule's row: its type, parameter count, mode, and the in/out sizes of its first call.

    The sizes come from a forward hook that records the first call and then removes itself (a module called several
    times, or recursively, shows its first call). TorchScript modules take no hooks: their sizes stay ``"?"``.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module
        self._in_size: Any = None
        self._out_size: Any = None
        self._hook_handle = None
        if not isinstance(module, torch.jit.ScriptModule):
            self._hook_handle = module.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        inputs = (*args, *kwargs.values())
        self._in_size = parse_batch_shape(inputs[0] if len(inputs) == 1 else inputs)
        self._out_size = parse_batch_shape(output)
        self.detach_hook()

    def detach_hook(self) -> None:
        """Remove the size hook if the layer never ran (done for every layer once the summary is made)."""
        if self._hook_handle is not None:
            self._hook_handle.remove()

    def __del__(self) -> None:
        self.detach_hook()

    @property
    def in_size(self) -> Any:
        return self._in_size or UNKNOWN_SIZE

    @property
    def out_size(self) -> Any:
        return self._out_size or UNKNOWN_SIZE

    @property
    def layer_type(self) -> str:
        return type(self._module).__name__

    @property
    def num_parameters(self) -> int:
        """Elements of this layer's parameters (lazy, uninitialised ones count 0)."""
        return sum(p.numel() for p in self._module.parameters() if not _is_lazy(p))

    @property
    def training(self) -> bool:
        return self._module.training


class ModelSummary:
    """The layers of ``model`` down to ``max_depth`` (1: its children; -1: every submodule; 0: no rows) and totals.

    When the model has an ``example_input_array`` (a tensor, a tuple/list of positional inputs or a dict of keyword
    inputs), it runs once on it, in eval mode and without gradients (each submodule's mode is restored after), to
    record every layer's in/out sizes and the FLOPs. Parameters that belong to no submodule get an ``other params``
    row. Shared parameters count once in the totals.
    """

    def __init__(self, model: nn.Module, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(
                f"`max_depth` can be -1, 0 or > 0, got {max_depth!s} ({type(max_depth).__name__}): "
                "use 1 for the model's children, n for n levels of submodules, -1 for all, 0 for no rows"
            )
        self._model = model
        self._max_depth = max_depth
        self._flop_counter = FlopCounterMode(display=False)
        self._lazy_warned = False
        self._layer_summary = self.summarize()

    # ---------------------------------------------------------------------------------------------------- layers
    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def named_modules(self) -> list[tuple[str, nn.Module]]:
        """The submodules that get a row, with their dotted names."""
        if self._max_depth == 0:
            return []
        modules = list(self._model.named_modules())[1:]  # the root is the table itself
        if self._max_depth > 0:
            modules = [(name, m) for name, m in modules if name.count(".") < self._max_depth]
        return modules

    def summarize(self) -> dict[str, LayerSummary]:
        """One :class:`LayerSummary` per row, filled by a forward pass on the model's ``example_input_array``."""
        summary = OrderedDict((name, LayerSummary(module)) for name, module in self.named_modules)
        try:
            if self.example_input is not None:
                self._forward_example_input()
        finally:
            for layer in summary.values():
                layer.detach_hook()
        return summary

    @property
    def example_input(self) -> Any:
        return getattr(self._model, "example_input_array", None)

    def _forward_example_input(self) -> None:
        example = self.example_input
        device = next((p.device for p in self._model.parameters() if not _is_lazy(p)), None)
        if device is not None:
            from torchplug.utilities import move_data_to_device

            example = move_data_to_device(example, device)
        modes = {module: module.training for module in self._model.modules()}
        self._model.eval()
        try:
            with torch.no_grad(), self._flop_counter:
                if isinstance(example, (list, tuple)):
                    self._model(*example)
                elif isinstance(example, dict):
                    self._model(**example)
                else:
                    self._model(example)
        finally:
            for module, training in modes.items():
                module.training = training

    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_summary)

    @property
    def layer_types(self) -> list[str]:
        return [layer.layer_type for layer in self._layer_summary.values()]

    @property
    def in_sizes(self) -> list[Any]:
        return [layer.in_size for layer in self._layer_summary.values()]

    @property
    def out_sizes(self) -> list[Any]:
        return [layer.out_size for layer in self._layer_summary.values()]

    @property
    def param_nums(self) -> list[int]:
        return [layer.num_parameters for layer in self._layer_summary.values()]

    @property
    def training_modes(self) -> list[bool]:
        return [layer.training for layer in self._layer_summary.values()]

    # ---------------------------------------------------------------------------------------------------- totals
    @property
    def total_training_modes(self) -> dict[str, int]:
        """How many submodules (every level, the root excluded) are in train and in eval mode."""
        modes = [module.training for module in list(self._model.modules())[1:]]
        return {"train": modes.count(True), "eval": modes.count(False)}

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self._parameters())

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._parameters() if p.requires_grad)

    @property
    def total_layer_params(self) -> int:
        return sum(self.param_nums)

    @property
    def model_size(self) -> float:
        """Megabytes (10^6 bytes) of the parameters, each in its own dtype (so a half-precision model is half)."""
        return sum(p.numel() * p.element_size() for p in self._parameters()) / 1e6

    @property
    def total_flops(self) -> int:
        """FLOPs of the example forward pass (0 without ``example_input_array``)."""
        return self._flop_counter.get_total_flops()

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        """Per row: FLOPs of the example forward pass by operator."""
        counts = self._flop_counter.get_flop_counts()
        root = type(self._model).__name__
        return {name: dict(counts.get(f"{root}.{name}", {})) for name in self.layer_names}

    def _parameters(self) -> list[nn.Parameter]:
        parameters = list(self._model.parameters())  # each shared parameter once
        if any(_is_lazy(p) for p in parameters) and not self._lazy_warned:
            self._lazy_warned = True
            warnings.warn(_LAZY_WARNING, UserWarning, stacklevel=3)
        return [p for p in parameters if not _is_lazy(p)]

    # ---------------------------------------------------------------------------------------------------- table
    def summary_data(self) -> list[tuple[str, list[str]]]:
        """The table's columns, each ``(header, cells)``, every cell a string: what ``str()`` lays out and what a
        ``ModelSummary`` callback's ``summarize`` override receives."""
        layers = list(self._layer_summary.values())
        columns: list[tuple[str, list[str]]] = [
            (" ", [str(i) for i in range(len(layers))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if layer.training else "eval" for layer in layers]),
            ("FLOPs", [get_human_readable_count(sum(ops.values())) for ops in self.flop_counts.values()]),
        ]
        if self.example_input is not None:
            columns.append(("In sizes", [str(size) for size in self.in_sizes]))
            columns.append(("Out sizes", [str(size) for size in self.out_sizes]))
        leftover = self.total_parameters - self._unique_layer_params()
        if leftover > 0 and layers:
            for header, cells in columns:
                cells.append({" ": " ", "Name": LEFTOVER_PARAMS_NAME}.get(header, NOT_APPLICABLE))
            columns[3][1][-1] = get_human_readable_count(leftover)
        return columns

    def _unique_layer_params(self) -> int:
        seen: dict[int, int] = {}
        for _, module in self.named_modules:
            for p in module.parameters():
                if not _is_lazy(p):
                    seen[id(p)] = p.numel()
        return sum(seen.values())

    def __str__(self) -> str:
        return format_summary_table(
            self.total_parameters, self.trainable_parameters, self.model_size, self.total_training_modes,
            self.total_flops, *self.summary_data(),
        )  # fmt: skip

    def __repr__(self) -> str:
        return str(self)


def summarize(model: nn.Module, max_depth: int = 1) -> ModelSummary:
    """The :class:`ModelSummary` of ``model`` down to ``max_depth`` levels of submodules."""
    return ModelSummary(model, max_depth=max_depth)


def summary_totals(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
) -> list[tuple[str, str]]:
    """The lines under a summary table, ``(value, label)``, as both the plain and the rich summary show them."""
    return [
        (get_human_readable_count(trainable_parameters), "Trainable params"),
        (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
        (get_human_readable_count(total_parameters), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (str(total_training_modes["train"]), "Modules in train mode"),
        (str(total_training_modes["eval"]), "Modules in eval mode"),
        (get_human_readable_count(total_flops), "Total Flops"),
    ]


def format_summary_table(
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int,
    *columns: tuple[str, list[str]],
) -> str:
    """Lay out ``columns`` (``(header, cells)``) as a ``|``-separated table followed by the totals."""
    lines: list[str] = []
    rows = len(columns[0][1]) if columns else 0
    if rows:
        widths = [max(len(header), *(len(cell) for cell in cells)) for header, cells in columns]
        lines.append(
            " | ".join(header.ljust(w) for (header, _), w in zip(columns, widths, strict=True)).rstrip()
        )
        rule = "-" * len(lines[0])
        lines.append(rule)
        for i in range(rows):
            cells = [column[1][i].ljust(w) for column, w in zip(columns, widths, strict=True)]
            lines.append(" | ".join(cells).rstrip())
        lines.append(rule)
    totals = summary_totals(total_parameters, trainable_parameters, model_size, total_training_modes, total_flops)
    width = max(10, *(len(value) + 1 for value, _ in totals))
    lines.extend(f"{value.ljust(width)}{label}" for value, label in totals)
    return "\n".join(lines)


def parse_batch_shape(batch: Any) -> Any:
    """The shape of a tensor as a list, nested like the tuples/lists holding tensors; ``"?"`` for anything else."""
    if hasattr(batch, "shape"):
        return list(batch.shape)
    if isinstance(batch, (list, tuple)):
        return [parse_batch_shape(item) for item in batch]
    return UNKNOWN_SIZE


def get_formatted_model_size(total_model_size: float) -> str:
    """Megabytes with three decimals: ``0.013``, ``1,024.000``."""
    return f"{total_model_size:,.3f}"


def get_human_readable_count(number: float) -> str:
    """A count in at most three significant digits with K/M/B/T: ``123``, ``1.2 K``, ``2.0 M``, ``400 T``.

    Below a thousand the count is exact; past trillions it stays in T (``5,000 T``).
    """
    if number < 0:
        raise ValueError(f"get_human_readable_count(number={number!r}): a count is >= 0")
    units = [" ", "K", "M", "B", "T"]
    group = 0
    if number > 0:
        group = min((int(math.floor(math.log10(number))) // 3), len(units) - 1)
    scaled = number / 1000**group
    if group == 0 or scaled >= 100:
        return f"{int(scaled):,d} {units[group]}"
    return f"{scaled:,.1f} {units[group]}"


def _is_lazy(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer)


__all__ = [
    "LEFTOVER_PARAMS_NAME",
    "NOT_APPLICABLE",
    "UNKNOWN_SIZE",
    "LayerSummary",
    "ModelSummary",
    "format_summary_table",
    "get_formatted_model_size",
    "get_human_readable_count",
    "parse_batch_shape",
    "summarize",
    "summary_totals",
]
