"""torchplug-amp's precisions pass the conformance kit (torchplug.testing)."""

from torchplug.testing import conformance

TestMixedPrecision = conformance("precision", "16-mixed")
TestBF16MixedPrecision = conformance("precision", "bf16-mixed")
