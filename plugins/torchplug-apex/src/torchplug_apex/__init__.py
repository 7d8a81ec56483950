"""torchplug-apex: NVIDIA apex's ``amp`` as ``precision="apex"`` (or ``precision=16`` with ``amp_level``)."""

from torchplug_apex._apex import INSTALL_HINT, OPT_LEVELS, STATE_KEY, ApexPrecision, find_amp

__version__ = "0.1.0"

__all__ = ["INSTALL_HINT", "OPT_LEVELS", "STATE_KEY", "ApexPrecision", "find_amp"]
