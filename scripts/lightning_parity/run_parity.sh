#!/usr/bin/env bash
# Lightning's own tests (tests/tests_pytorch) on torchplug through the rename-only shim, or on Lightning (--oracle).
#
#   scripts/lightning_parity/run_parity.sh LIGHTNING_SRC_DIR            # torchplug, in .venv (make setup)
#   scripts/lightning_parity/run_parity.sh LIGHTNING_SRC_DIR --oracle   # pytorch-lightning 2.6.6, in .venv-oracle
#
# LIGHTNING_SRC_DIR holds Lightning's src/ and tests/ at one commit (README.md says how to extract them).
# Writes to OUT (default .lightning-parity/torchplug or .lightning-parity/oracle): selection.tsv, junit.xml,
# results.txt and summary.txt. PYTEST_ARGS adds pytest options (e.g. PYTEST_ARGS="-n 1").
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
        # The oracle environment (make setup-oracle) has Lightning but not the test runner torchplug's .venv has.
        "$python" -m pip --disable-pip-version-check -q install \
            pytest==9.2.0 pytest-xdist==3.8.0 pytest-timeout==2.4.0 tensorboard
        ;;
    *)
        echo "run_parity.sh: unknown mode '$mode' (nothing, or --oracle)" >&2
        exit 2
        ;;
esac

out="${OUT:-$repo/.lightning-parity/$label}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

python3 "$here/select_tests.py" "$src" > "$out/selection.tsv"

export LIGHTNING_PARITY_SRC="$src"
export LIGHTNING_PARITY_SELECTION="$out/selection.tsv"
export PYTHONPATH="$shim:$here:$src/tests"
start=$(date +%s)
# Exit status 1 (some tests failed) is the expected case; anything else is reported below.
status=0
(cd "$src/tests" && "$python" -m pytest -c "$here/pytest.ini" --rootdir . -p parity_select \
    -n 2 --timeout 60 -q --junitxml "$out/junit.xml" ${PYTEST_ARGS:-} tests_pytorch) > "$out/pytest.log" 2>&1 ||
    status=$?
wall=$(( $(date +%s) - start ))

{
    echo "Lightning source: $src (commit: $(cat "$src/COMMIT" 2>/dev/null || echo unknown))"
    echo "python: $python ($("$python" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__)'))"
    echo "pytest exit status: $status; wall time: ${wall}s"
    python3 "$here/summarize.py" "$out/selection.tsv" "$out/junit.xml" "$out/results.txt" "$label"
} | tee "$out/summary.txt"
[ "$status" -le 1 ]
