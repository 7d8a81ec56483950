"""torchplug-cuda passes the conformance kit (torchplug.testing); without a GPU only the checks that read the
plugin run, the others are skipped with the reason."""

from torchplug.testing import conformance

TestCUDAAccelerator = conformance("accelerator", "cuda")
