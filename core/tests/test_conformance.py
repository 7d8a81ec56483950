"""The core's own backends pass the conformance kit, exactly as a third party's must (torchplug.testing)."""

from __future__ import annotations

from torchplug.distributed import find_free_port
from torchplug.testing import conformance


def torchrun_job() -> dict[str, str]:
    """The variables torchrun sets for a job of one process."""
    return {"TORCHELASTIC_RUN_ID": "kit", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port())}  # fmt: skip


def srun_job() -> dict[str, str]:
    """The variables srun sets for a step of one task."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0", "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_STEP_NODELIST": "localhost",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port())}  # fmt: skip


TestCPUAccelerator = conformance("accelerator", "cpu")
TestSingleDeviceStrategy = conformance("strategy", "single_device")
TestFullPrecision = conformance("precision", "32-true")
TestDoublePrecision = conformance("precision", "64-true")
TestHalfPrecision = conformance("precision", "16-true")
TestBFloat16Precision = conformance("precision", "bf16-true")
TestLocalEnvironment = conformance("environment", "local")
TestTorchElasticEnvironment = conformance("environment", "torchelastic", environ=torchrun_job)
TestSLURMEnvironment = conformance("environment", "slurm", environ=srun_job)
