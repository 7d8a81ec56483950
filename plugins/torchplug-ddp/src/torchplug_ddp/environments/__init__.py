"""Who started this job's processes and where they meet: torchrun, SLURM's srun, or our own launcher."""

from torchplug_ddp.environments.local import LocalEnvironment
from torchplug_ddp.environments.slurm import SLURMEnvironment
from torchplug_ddp.environments.torchelastic import TorchElasticEnvironment

__all__ = ["LocalEnvironment", "SLURMEnvironment", "TorchElasticEnvironment"]
