"""torchplug-xla: ``accelerator="tpu"`` (alias ``"xla"``) and the ``xla``, ``single_xla`` and ``xla_spmd`` strategies.

Importing this package does not import torch_xla; selecting one of its backends does.
"""

from torchplug_xla.accelerator import XLAAccelerator
from torchplug_xla.strategies import SingleXLAStrategy, XLASPMDStrategy, XLAStrategy

__version__ = "0.1.0"

__all__ = ["SingleXLAStrategy", "XLAAccelerator", "XLASPMDStrategy", "XLAStrategy"]
