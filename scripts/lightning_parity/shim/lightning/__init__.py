"""Lightning parity shim: `lightning` resolves to torchplug by renaming only (see ../_lightning_parity_shim.py)."""

import sys

import _lightning_parity_shim

_lightning_parity_shim.populate_root(sys.modules[__name__])
