"""torchplug-dp: the ``dp`` strategy, ``torch.nn.DataParallel`` over several GPUs in one process."""

from torchplug_dp.strategy import DataParallelStrategy

__all__ = ["DataParallelStrategy"]
