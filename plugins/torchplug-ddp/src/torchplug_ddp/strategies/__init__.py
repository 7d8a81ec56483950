"""The four strategies: ``ddp``, ``ddp_spawn``, ``ddp_cpu`` and ``ddp2``."""

from torchplug_ddp.strategies.ddp import DDPStrategy
from torchplug_ddp.strategies.ddp2 import DDP2Strategy
from torchplug_ddp.strategies.ddp_cpu import DDPCPUStrategy
from torchplug_ddp.strategies.ddp_spawn import DDPSpawnStrategy

__all__ = ["DDP2Strategy", "DDPCPUStrategy", "DDPSpawnStrategy", "DDPStrategy"]
