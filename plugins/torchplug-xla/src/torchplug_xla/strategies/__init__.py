"""Strategies for XLA devices: ``xla`` (one process per device), ``single_xla``, ``xla_spmd`` (one program, many devices)."""

from torchplug_xla.strategies.single import SingleXLAStrategy
from torchplug_xla.strategies.spmd import XLASPMDStrategy
from torchplug_xla.strategies.xla import XLAStrategy

__all__ = ["SingleXLAStrategy", "XLASPMDStrategy", "XLAStrategy"]
