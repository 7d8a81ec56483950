"""torchplug-fsdp's strategy passes the conformance kit (torchplug.testing), two-process checks included."""

from torchplug.testing import conformance

TestFSDPStrategy = conformance("strategy", "fsdp")
