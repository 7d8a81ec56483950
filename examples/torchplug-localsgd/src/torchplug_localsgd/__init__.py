import torch
import torch.distributed as dist

from torchplug import hookimpl
from torchplug_ddp import DDPStrategy


class LocalSGDStrategy(DDPStrategy):
    """Local SGD: each process steps on its own gradients; parameters are averaged every ``local_sgd_period``
    steps. ``Trainer(strategy="localsgd", local_sgd_period=4)`` takes every ``ddp`` option too."""

    def __init__(self, local_sgd_period: int = 4, **ddp_options):
        super().__init__(**ddp_options)
        self.local_sgd_period = local_sgd_period

    def wrap(self, trainer, module):
        ddp = super().wrap(trainer, module)
        ddp.register_comm_hook(None, _keep_local_gradients)  # backward all-reduces nothing
        return ddp

    @hookimpl(wrapper=True)
    def torchplug_step_ops(self, trainer):
        ops = yield from super().torchplug_step_ops(trainer)
        step = ops.optimizer_step

        def step_then_average(optimizer, closure, **kwargs):
            taken = step(optimizer, closure, **kwargs)
            if (trainer.global_step + 1) % self.local_sgd_period == 0:
                for parameter in trainer.lightning_module.parameters():
                    dist.all_reduce(parameter.data)
                    parameter.data /= trainer.world_size
            return taken

        ops.optimizer_step = step_then_average
        return ops

    # Between averagings each process has parameters of its own, and a checkpoint's state_dict holds rank 0's:
    # whoever creates state saves it, so every rank saves and restores its own parameters.
    @hookimpl
    def torchplug_state_dict(self, trainer):
        return {"localsgd": {"parameters": [p.detach().clone() for p in trainer.lightning_module.parameters()]}}

    @hookimpl
    def torchplug_load_state_dict(self, trainer, states):
        if "localsgd" in states:
            with torch.no_grad():
                for parameter, saved in zip(trainer.lightning_module.parameters(), states["localsgd"]["parameters"]):
                    parameter.copy_(saved)


def _keep_local_gradients(state, bucket):
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future
