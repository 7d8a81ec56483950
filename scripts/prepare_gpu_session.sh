#!/usr/bin/env bash
# Fill dist/ with what scripts/gpu_session.sh needs on a GPU machine without network, on a machine that has it:
#
#   scripts/prepare_gpu_session.sh [APEX_SOURCE]
#
# dist/wheels   torchplug's wheels (scripts/build_wheels.sh);
# dist/deps     wheels of what torchplug and the test run need besides torch and pytest, for machines that lack them:
#               pluggy, tqdm, nvidia-ml-py, pytest-xdist, execnet, pytest-timeout (pure Python) and pyyaml (built
#               per Python version: cp310 to cp313, manylinux x86_64);
# dist/apex-25.04/apex  NVIDIA apex 25.04's Python package, when APEX_SOURCE names a clone of github.com/NVIDIA/apex
#               (a work tree or a bare repository; tag 25.04 is read from it).
# Then hand dist/ to the GPU machine with the repository (the device tool's `carry: ["dist"]`) and run
# scripts/gpu_session.sh there. PYTHON picks the interpreter that builds and downloads (default: .venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
pip=("$python" -m pip --disable-pip-version-check)

PYTHON="$python" scripts/build_wheels.sh dist/wheels
rm -rf dist/deps && mkdir -p dist/deps
"${pip[@]}" download --quiet --no-deps --only-binary=:all: -d dist/deps \
    pluggy tqdm nvidia-ml-py pytest-xdist execnet pytest-timeout
for version in 3.10 3.11 3.12 3.13; do
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: -d dist/deps --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 pyyaml || echo "no pyyaml wheel for $version"
done
if [ $# -ge 1 ]; then
    rm -rf dist/apex-25.04 && mkdir -p dist/apex-25.04
    git -C "$1" archive 25.04 apex | tar -x -C dist/apex-25.04
fi
du -sh dist/* | sort -h
