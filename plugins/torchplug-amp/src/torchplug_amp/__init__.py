"""torchplug-amp: ``precision="16-mixed"`` and ``"bf16-mixed"`` with ``torch.autocast`` and ``torch.amp.GradScaler``."""

from torchplug_amp._autocast import (
    STATE_KEY,
    AutocastPrecision,
    BF16MixedPrecision,
    MixedPrecision,
    MixedPrecisionPlugin,
)

__version__ = "0.1.0"

__all__ = ["STATE_KEY", "AutocastPrecision", "BF16MixedPrecision", "MixedPrecision", "MixedPrecisionPlugin"]
