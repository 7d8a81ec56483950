"""sync_batchnorm=True: BatchNorm layers become SyncBatchNorm before the DDP wrap, keeping the same parameters."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchplug import MisconfigurationError, StepModule, Trainer
from torchplug.testing import QUIET
from torchplug_ddp.strategies.ddp import DDPStrategy


def test_cpu_refuses_sync_batchnorm_with_a_reason():
    with pytest.raises(MisconfigurationError, match="sync_batchnorm=True on the CPU: torch's SyncBatchNorm synchronises only GPU"):
        Trainer(strategy="ddp_cpu", accelerator="cpu", devices=2, sync_batchnorm=True, **QUIET)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
@pytest.mark.xdist_group("gpu")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (DDP refuses SyncBatchNorm on the CPU)")
def test_wrap_converts_batchnorm_in_the_users_module():
    """A real one-process NCCL group, so DistributedDataParallel can be built around the converted module."""
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Sequential(nn.BatchNorm1d(8))).cuda()
    weight = model[1].weight
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        strategy = DDPStrategy(sync_batchnorm=True)
        trainer = SimpleNamespace(root_device=torch.device("cuda", 0))
        wrapped = strategy.torchplug_wrap_module(trainer=trainer, module=StepModule(model))
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel)
        assert isinstance(model[1], nn.SyncBatchNorm) and isinstance(model[2][0], nn.SyncBatchNorm)
        assert model[1].weight is weight  # the optimizer built before the wrap still owns it
        assert wrapped.module.module is model
        del wrapped
    finally:
        dist.destroy_process_group()
