"""torchplug-dp passes the conformance kit (torchplug.testing); it needs CUDA GPUs, so without them only the
checks that read the plugin run, the others are skipped with the reason."""

from torchplug.testing import conformance

TestDataParallelStrategy = conformance("strategy", "dp")
