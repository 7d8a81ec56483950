"""``ModelSummary``: a table of the model's layers and parameter counts, printed when ``fit`` starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchplug._errors import MisconfigurationError
from torchplug.callbacks._base import Callback
from torchplug.utilities.model_summary import format_summary_table, summarize

if TYPE_CHECKING:
    from torchplug.module import Module
    from torchplug.trainer import Trainer


class ModelSummary(Callback):
    """Print :func:`~torchplug.utilities.model_summary.summarize` of the model at fit start, on global rank 0
    (``Trainer(enable_model_summary=False)`` to skip).

    ``max_depth`` is how many levels of submodules get a row: 1 shows the model's direct children, -1 every
    submodule, 0 prints nothing. To show the table another way, override :meth:`summarize` (``RichModelSummary``
    does); ``summarize_kwargs`` are handed to it.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise MisconfigurationError(
                f"ModelSummary(max_depth={max_depth!r}): use an int >= 0, or -1 for every level"
            )
        self.max_depth = max_depth
        self.summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer: Trainer, pl_module: Module) -> None:
        if self.max_depth == 0:
            return
        summary = summarize(pl_module, max_depth=self.max_depth)
        if trainer.is_global_zero:
            self.summarize(
                summary.summary_data(), summary.total_parameters, summary.trainable_parameters, summary.model_size,
                summary.total_training_modes, total_flops=summary.total_flops, **self.summarize_kwargs,
            )  # fmt: skip

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
        """Show the table: ``summary_data`` is its columns (``(header, cells)``), the rest its totals."""
        table = format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *summary_data,
        )
        print(table, flush=True)


__all__ = ["ModelSummary", "summarize"]
