"""torchplug-ddp's strategies pass the conformance kit (torchplug.testing), two-process checks included."""

from torchplug.testing import conformance

TestDDPStrategy = conformance("strategy", "ddp")
TestDDPSpawnStrategy = conformance("strategy", "ddp_spawn")
TestDDPCPUStrategy = conformance("strategy", "ddp_cpu")
TestDDP2Strategy = conformance("strategy", "ddp2")
