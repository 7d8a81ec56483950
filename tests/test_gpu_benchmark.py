"""benchmarks/gpu.py on a machine without CUDA says so and measures nothing (it is a benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_benchmark_refuses_to_run_without_cuda():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "benchmarks/gpu.py measures training on a CUDA GPU" in done.stderr
    assert "Nothing was measured" in done.stderr and done.stdout == ""
