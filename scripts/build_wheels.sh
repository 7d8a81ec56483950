#!/usr/bin/env bash
# Build the wheels of torchplug and of every backend package (no dependencies) into OUT_DIR (default dist/wheels).
#
#   scripts/build_wheels.sh [OUT_DIR]          # PYTHON=... picks the interpreter (default: .venv/bin/python)
#
# Each package is built from a fresh copy of its folder, so a stale build/ from an earlier build never slips files
# into a wheel. Needs pip, setuptools>=64 and wheel in PYTHON (no network: --no-build-isolation). The wheels are
# pure Python (py3-none-any): build them on any machine, install them anywhere with
#   pip install --no-deps --target DIR dist/wheels/*.whl   and   PYTHONPATH=DIR
# (see scripts/test_installed.sh and docs/benchmarks.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-$root/dist/wheels}" && cd "${1:-$root/dist/wheels}" && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

rm -f "$out"/torchplug*.whl
for package in "$root/core" "$root"/plugins/torchplug-*; do
    name="$(basename "$package")"
    mkdir -p "$work/$name"
    (cd "$package" && tar --exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude=tests -cf - .) \
        | tar -xf - -C "$work/$name"
    "$python" -m pip wheel --quiet --no-deps --no-build-isolation --disable-pip-version-check \
        --wheel-dir "$out" "$work/$name"
done
ls -1 "$out"/torchplug*.whl
