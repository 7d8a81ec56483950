"""Reading GPU state: nvidia-smi's CSV, the fall back from NVML to nvidia-smi, and CUDA_VISIBLE_DEVICES mapping.

This machine has neither NVML nor nvidia-smi. The fallback test puts a stand-in ``nvidia-smi`` on PATH (a shell
script printing what the real one prints for these queries) and runs it as a real process.
"""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from torchplug import MisconfigurationError
from torchplug_cuda import _gpus
from torchplug_cuda._gpus import GPUState, parse_nvidia_smi, visible_gpus

GPU_CSV = """\
0, GPU-1c3f0a6e-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3, 1021, 81559, Default
1, GPU-7d2e9b10-aaaa-bbbb-cccc-111111111111, NVIDIA H100 80GB HBM3, 40960, 81559, Exclusive_Process
2, GPU-9e0f1a2b-aaaa-bbbb-cccc-222222222222, NVIDIA A100-SXM4-40GB, [N/A], 40960, Default
"""
APPS_CSV = """\
GPU-7d2e9b10-aaaa-bbbb-cccc-111111111111, 4242
GPU-1c3f0a6e-aaaa-bbbb-cccc-000000000000, 77
GPU-7d2e9b10-aaaa-bbbb-cccc-111111111111, 4243
"""


def test_parse_nvidia_smi_tables():
    gpus = parse_nvidia_smi(GPU_CSV, APPS_CSV)
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_used_mib == 1021.0
    assert gpus[0].pids == (77,)
    assert gpus[1].compute_mode == "Exclusive_Process" and gpus[1].pids == (4242, 4243)
    assert gpus[2].pids == () and gpus[2].memory_used_mib != gpus[2].memory_used_mib  # NaN for [N/A]
    assert gpus[2].memory_total_mib == 40960.0


def test_nvidia_smi_is_used_when_nvml_cannot_load(tmp_path, monkeypatch):
    (tmp_path / "gpus.csv").write_text(GPU_CSV)
    (tmp_path / "apps.csv").write_text(APPS_CSV)
    script = tmp_path / "nvidia-smi"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            case "$1" in
              --query-gpu=index,uuid,name,memory.used,memory.total,compute_mode) cat {tmp_path}/gpus.csv ;;
              --query-compute-apps=gpu_uuid,pid) cat {tmp_path}/apps.csv ;;
              *) echo "unexpected query $1" >&2; exit 2 ;;
            esac
            [ "$2" = "--format=csv,noheader,nounits" ] || exit 3
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    def nvml(processes):
        import pynvml

        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(_gpus, "_query_nvml", nvml)
    gpus = _gpus.query_gpus()
    assert [(g.index, g.pids) for g in gpus] == [(0, (77,)), (1, (4242, 4243)), (2, ())]
    assert [g.pids for g in _gpus.query_gpus(processes=False)] == [(), (), ()]


def test_without_nvml_and_nvidia_smi_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(_gpus, "_query_nvml", lambda processes: (_ for _ in ()).throw(OSError("libnvidia-ml.so.1")))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(_gpus.GPUQueryError) as info:
        _gpus.query_gpus()
    assert "libnvidia-ml.so.1" in str(info.value) and "nvidia-smi is not on PATH" in str(info.value)
    assert "pip install nvidia-ml-py" in str(info.value)


def _machine(n: int) -> list[GPUState]:
    return [GPUState(i, f"GPU-{i}{i}{i}{i}-x", "GPU", 0.0, 1.0) for i in range(n)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("2,0", [2, 0]),
        (" 1, 3 ", [1, 3]),
        ("0,7,1", [0]),  # stops at the first GPU that does not exist
        ("1,-1,2", [1]),
        ("0,0", []),  # a repeated GPU makes the whole list invalid
        ("GPU-3333,GPU-1", [3, 1]),  # UUID prefixes
        ("GPU-3333,2", [3]),  # no mixing of the two forms
    ],
)
def test_visible_gpus_follow_cuda_visible_devices(value, expected):
    assert [g.index for g in visible_gpus(_machine(4), value)] == expected


def test_visible_gpus_read_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert [g.index for g in visible_gpus(_machine(4))] == [3]


def test_mig_instances_are_refused_clearly():
    with pytest.raises(MisconfigurationError, match="names MIG instances"):
        visible_gpus(_machine(1), "MIG-0a1b2c3d-aaaa")
