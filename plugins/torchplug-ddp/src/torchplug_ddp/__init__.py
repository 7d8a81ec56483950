"""torchplug-ddp: multi-process data parallel training with DistributedDataParallel (``ddp``, ``ddp_spawn``,
``ddp_cpu``, ``ddp2``). Built on the core's :class:`torchplug.distributed.ProcessGroupStrategy`; the cluster
environments (``torchelastic``, ``slurm``, ``local``) are part of the core."""

from torchplug_ddp.strategies import DDP2Strategy, DDPCPUStrategy, DDPSpawnStrategy, DDPStrategy

__version__ = "0.1.0"

__all__ = ["DDP2Strategy", "DDPCPUStrategy", "DDPSpawnStrategy", "DDPStrategy"]
