"""Loggers: where metrics go."""

from torchplug.loggers._base import Logger

__all__ = ["Logger"]
