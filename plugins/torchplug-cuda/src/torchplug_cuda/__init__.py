"""torchplug-cuda: the ``cuda`` accelerator (alias ``gpu``) for NVIDIA GPUs."""

from torchplug_cuda.accelerator import CUDAAccelerator

__all__ = ["CUDAAccelerator"]
