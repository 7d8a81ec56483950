"""Callbacks: code that runs at the loop's hook points."""

from torchplug.callbacks._base import Callback

__all__ = ["Callback"]
