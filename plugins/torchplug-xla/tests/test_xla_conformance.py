"""torchplug-xla's accelerator and strategies pass the conformance kit (torchplug.testing) on PyTorch/XLA's CPU
device: ``make test-xla`` (.venv-xla, ``PJRT_DEVICE=CPU``). The kit's processes see two XLA devices
(``CPU_NUM_DEVICES=2``), so the strategies' two-process checks run as well."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xla
pytest.importorskip("torch_xla", reason="needs torch_xla: run in .venv-xla (make test-xla)")

from torchplug.testing import conformance  # noqa: E402

ONE_CPU_DEVICE = {"PJRT_DEVICE": "CPU"}

TestXLAAccelerator = conformance("accelerator", "tpu", environ=ONE_CPU_DEVICE, timeout=300)
TestSingleXLAStrategy = conformance("strategy", "single_xla", environ=ONE_CPU_DEVICE, timeout=300)
TestXLAStrategy = conformance("strategy", "xla", environ=ONE_CPU_DEVICE, timeout=300)
TestXLASPMDStrategy = conformance("strategy", "xla_spmd", environ=ONE_CPU_DEVICE, timeout=300)
