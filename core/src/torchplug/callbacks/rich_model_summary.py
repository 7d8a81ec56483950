"""``RichModelSummary``: the ``ModelSummary`` table drawn with ``rich`` (``pip install 'torchplug[rich]'``)."""

from __future__ import annotations

from typing import Any

from torchplug.callbacks.model_summary import ModelSummary
from torchplug.callbacks.rich_progress import _require_rich
from torchplug.utilities.model_summary import summary_totals

_RIGHT_ALIGNED = {"Params", "FLOPs", "In sizes", "Out sizes"}


class RichModelSummary(ModelSummary):
    """:class:`ModelSummary` as a rich table on rich's console, then the totals; the Trainer's default summary when
    a ``RichProgressBar`` is among its callbacks. ``header_style`` (a rich style, default ``"bold magenta"``)
    styles the header row."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        _require_rich("RichModelSummary")
        super().__init__(max_depth, **summarize_kwargs)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        console = get_console()
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for header, _ in summary_data:
            if header == " ":
                table.add_column(header, style="dim")
            else:
                table.add_column(
                    header, justify="right" if header in _RIGHT_ALIGNED else "left", no_wrap=True
                )
        for row in zip(*(cells for _, cells in summary_data), strict=True):
            table.add_row(*map(str, row))
        console.print(table)

        totals = Table.grid(expand=False, padding=(0, 2))
        totals.add_column(justify="right")
        totals.add_column()
        for value, label in summary_totals(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops
        ):
            totals.add_row(value.strip(), label)
        console.print(totals)


__all__ = ["RichModelSummary"]
