"""torchplug-ddp: multi-process training on torch.distributed (``ddp``, ``ddp_spawn``, ``ddp_cpu``, ``ddp2``)
and the cluster environments that say who started the processes (``torchelastic``, ``slurm``, ``local``)."""

from torchplug_ddp._nodelist import expand_nodelist, first_host
from torchplug_ddp.environments import LocalEnvironment, SLURMEnvironment, TorchElasticEnvironment
from torchplug_ddp.strategies import DDP2Strategy, DDPCPUStrategy, DDPSpawnStrategy, DDPStrategy

__version__ = "0.1.0"

__all__ = [
    "DDP2Strategy",
    "DDPCPUStrategy",
    "DDPSpawnStrategy",
    "DDPStrategy",
    "LocalEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "expand_nodelist",
    "first_host",
]
