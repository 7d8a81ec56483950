#!/usr/bin/env bash
# Lightning's own tests (tests/tests_pytorch) on torchplug through the rename-only shim, or on Lightning (--oracle).
#
#   scripts/lightning_parity/run_parity.sh LIGHTNING_SRC_DIR            # torchplug, in .venv (make setup)
#   scripts/lightning_parity/run_parity.sh LIGHTNING_SRC_DIR --oracle   # pytorch-lightning 2.6.6, in .venv-oracle
#
# LIGHTNING_SRC_DIR holds Lightning's src/ and tests/ at one commit (README.md says how to extract them).
# Writes to OUT (default .lightning-parity/torchplug or .lightning-parity/oracle): selection.tsv, junit.xml,
# results.txt and summary.txt. PYTEST_ARGS adds pytest options (e.g. PYTEST_ARGS="-n 1"). PARITY_TESTS narrows the
# run to some of Lightning's test paths (e.g. PARITY_TESTS="tests_pytorch/tuner tests_pytorch/test_cli.py"; the rest
# count as not run). DEPS names an existing folder of Lightning's test requirements to reuse (by default
# .lightning-parity/test-deps-LABEL of this checkout, installed on first use).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
src="$(cd "${1:?usage: run_parity.sh LIGHTNING_SRC_DIR [--oracle]}" && pwd)"
mode="${2:-torchplug}"

case "$mode" in
    torchplug)
        python="${PYTHON:-$repo/.venv/bin/python}"
        shim="$here/shim"
        label=torchplug
        if "$python" -c "import pytorch_lightning" 2>/dev/null; then
            echo "run_parity.sh: pytorch_lightning is importable in $python; the torchplug run needs an environment" \
                "without it (make setup builds one)" >&2
            exit 2
        fi
        ;;
    --oracle)
        python="${PYTHON:-$repo/.venv-oracle/bin/python}"
        shim="$here/oracle_shim"
        label=oracle
        ;;
    *)
        echo "run_parity.sh: unknown mode '$mode' (nothing, or --oracle)" >&2
        exit 2
        ;;
esac

out="${OUT:-$repo/.lightning-parity/$label}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Lightning's test requirements (its requirements/pytorch/test.txt and extra.txt, less coverage, GPU-only and
# network-only packages), installed beside the environment rather than into it, so that .venv and .venv-oracle stay
# as the Makefile builds them. A package the environment already has keeps its version (a constraint), and its
# requirement is left out (the environment's rich or jsonargparse, from torchplug's extras, may be newer than
# Lightning's upper bound; the tests run against what a user of that environment has).
deps="${DEPS:-$repo/.lightning-parity/test-deps-$label}"
if [ ! -e "$deps/.installed" ]; then
    "$python" -m pip --disable-pip-version-check -q freeze --exclude-editable | grep -v '^-e ' > "$out/constraints.txt"
    requirements=$("$python" - "$out/constraints.txt" <<'PY'
import re, sys
have = {re.split(r"[=<>@ ]", line, maxsplit=1)[0].lower().replace("_", "-") for line in open(sys.argv[1]) if line.strip()}
wanted = ["pytest==9.2.0", "pytest-xdist==3.8.0", "pytest-timeout==2.4.0", "pytest-rerunfailures==16.1",
          "cloudpickle>=1.3,<3.2.0", "scikit-learn>0.22.1,<1.9.0", "onnx>1.12.0,<1.21.0", "onnxruntime>=1.12.0,<1.24.0",
          "onnxscript>=0.1.0,<0.6.0", "onnx-ir<0.1.16", "psutil<7.3.0", "pandas>2.0,<3.1.0", "tensorboard>=2.11",
          "omegaconf>=2.2.3,<2.4.0", "hydra-core>=1.2.0,<1.4.0", "jsonargparse[signatures]>=4.39.0,<4.46.0",
          "rich>=12.3.0,<14.4.0", "tensorboardX>=2.2,<2.7.0", "matplotlib", "fastapi", "uvicorn"]
name = lambda req: re.split(r"[\[=<>]", req, maxsplit=1)[0].lower().replace("_", "-")
print(" ".join(req for req in wanted if name(req) not in have))
PY
)
    # shellcheck disable=SC2086  # one word per requirement
    "$python" -m pip --disable-pip-version-check -q install --target "$deps" -c "$out/constraints.txt" $requirements
    touch "$deps/.installed"
fi

python3 "$here/select_tests.py" "$src" > "$out/selection.tsv"

export LIGHTNING_PARITY_SRC="$src"
export LIGHTNING_PARITY_SELECTION="$out/selection.tsv"
# A PYTHONPATH given by the caller (a checkout's sources ahead of the installed ones) comes after the shim.
export PYTHONPATH="$shim:$here:$src/tests:$deps${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
# Exit status 1 (some tests failed) is the expected case; anything else is reported below.
status=0
(cd "$src/tests" && "$python" -m pytest -c "$here/pytest.ini" --rootdir . -p parity_select \
    -n 2 --timeout 60 -q --junitxml "$out/junit.xml" ${PYTEST_ARGS:-} ${PARITY_TESTS:-tests_pytorch}) > "$out/pytest.log" 2>&1 ||
    status=$?
wall=$(( $(date +%s) - start ))

{
    echo "Lightning source: $src (commit: $(cat "$src/COMMIT" 2>/dev/null || echo unknown))"
    echo "python: $python ($("$python" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__)'))"
    echo "pytest exit status: $status; wall time: ${wall}s"
    python3 "$here/summarize.py" "$out/selection.tsv" "$out/junit.xml" "$out/results.txt" "$label"
} | tee "$out/summary.txt"
[ "$status" -le 1 ]
