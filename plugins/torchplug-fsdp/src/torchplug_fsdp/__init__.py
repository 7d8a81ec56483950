"""torchplug-fsdp: fully sharded data parallel training (``strategy="fsdp"``) with PyTorch's FSDP2, sharded
checkpoints through ``torch.distributed.checkpoint``, and a tool to consolidate them into one file.

Built on the core's :class:`torchplug.distributed.ProcessGroupStrategy` (launching, supervision, cluster
environments, collectives); everything else is in ``_strategy.py`` (sharding, accumulation), ``_policy.py``
(shard units, activation checkpointing) and ``_checkpoint.py`` (the checkpoint directory)."""

from torchplug_fsdp._checkpoint import consolidate_checkpoint
from torchplug_fsdp._strategy import FSDPStrategy

__version__ = "0.1.0"

__all__ = ["FSDPStrategy", "consolidate_checkpoint"]
