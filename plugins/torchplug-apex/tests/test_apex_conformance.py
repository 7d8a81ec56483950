"""torchplug-apex passes the conformance kit (torchplug.testing); without NVIDIA apex and a GPU only the checks
that read the plugin run, the others are skipped with the reason."""

from torchplug.testing import conformance

TestApexPrecision = conformance("precision", "apex")
