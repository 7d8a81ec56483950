#!/usr/bin/env bash
# The test suite against torchplug installed from its wheels with `pip install --no-deps --target DIR` and found only
# through PYTHONPATH=DIR: how a GPU cluster without network installs it over its own CUDA build of torch.
#
#   scripts/test_installed.sh PYTHON WHEELS_DIR [pytest arguments ...]
#   make test-wheels                      # the same here: a .venv-wheels with torch and the test dependencies only
#
# PYTHON: an interpreter with torch, the test dependencies (pytest, pytest-xdist, pytest-timeout, setuptools; tensorboard
# and matplotlib for the logger and plot tests) and what torchplug's wheels require besides torch (checked below
# against the wheels' metadata: pluggy, tqdm, pyyaml, nvidia-ml-py), but no torchplug. WHEELS_DIR: the wheels of
# scripts/build_wheels.sh. Extra arguments go to pytest and replace the default, -m "not xla" (the XLA suite needs its
# own environment, docs/xla.md). TARGET=DIR installs into DIR instead of a temporary folder.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
python="$1"
wheels="$(cd "$2" && pwd)"
shift 2
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${TARGET:-$(mktemp -d)/site}"
mkdir -p "$target" && target="$(cd "$target" && pwd)"

if env -u PYTHONPATH "$python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchplug") is None)'; then
    echo "$python already imports torchplug (installed in its environment): use an interpreter without it, so that" \
         "the tests import the wheels installed with --target" >&2
    exit 2
fi

"$python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --target "$target" "$wheels"/torchplug*.whl
export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"

# --no-deps installs nothing else: say what the wheels need that this interpreter lacks.
"$python" - "$target" <<'PY'
import importlib.metadata as md
import re
import sys

target = sys.argv[1]
missing = []
for dist in md.distributions(path=[target]):
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        if name.lower().startswith("torchplug"):
            continue
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(f"{requirement} (required by {dist.metadata['Name']})")
if missing:
    sys.exit("not installed in this interpreter's environment: " + "; ".join(sorted(set(missing))))
import torch
import torchplug

assert torchplug.__file__.startswith(target), f"torchplug imported from {torchplug.__file__}, not from {target}"
print(f"torchplug {md.version('torchplug')} from {target}; torch {torch.__version__}, "
      f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
PY

cd "$root"
if [ $# -eq 0 ]; then
    set -- -m "not xla"
fi
exec "$python" -m pytest "$@"
