from __future__ import annotations

from typing import Any


class Logger:
    """Where metrics go. The trainer calls these on global rank 0 only.

    ``log_metrics`` receives plain Python floats: the trainer reads device values once per logging interval, so
    a logger never forces a device-to-host copy itself.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def version(self) -> int | str | None:
        return None

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def log_dir(self) -> str | None:
        """Folder of this run's files; checkpoints go to ``<log_dir>/checkpoints`` by default."""
        return None

    def log_hyperparams(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def save(self) -> None: ...

    def finalize(self, status: str) -> None:
        """The run ended: ``status`` is ``"success"``, ``"failed"`` or ``"interrupted"``."""
        self.save()
