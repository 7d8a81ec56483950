#!/usr/bin/env bash
# Everything the project checks on a GPU, in one call, for a GPU machine lent for a few minutes without network.
#
#   OUT=DIR scripts/gpu_session.sh [PHASE ...]      PHASE: env gpu-tests bench suite (default: all four, in order)
#
# 1. env        nvidia-smi, torch and CUDA versions, what is importable; torchplug's wheels (dist/wheels, from
#               scripts/build_wheels.sh, carried to the machine) installed with pip install --no-deps --target over
#               the machine's own CUDA torch, found through PYTHONPATH only (as on clusters without network);
# 2. gpu-tests  the GPU tests (marker gpu: what `make test-gpu` runs), apex's included when apex imports;
# 3. bench      benchmarks/gpu.py --size small (what `make test-gpu` runs after the tests), rows also as JSON;
# 4. suite      the whole suite (-m "not xla", without the GPU tests when phase 2 ran) with the GPU visible.
#
# Logs, JUnit XML, the benchmark JSON and summary.md go to $OUT (default ./gpu-session-out). Environment:
#   PYTHON   an interpreter with a CUDA build of torch and pytest (default: python3);
#   BUDGET   seconds for all phases together (default 540, to fit one command under a 600 s limit); each phase
#            gets at most its share (gpu-tests 300, bench 180, suite the rest) and is interrupted when it is spent.
#            With 15 minutes of device time, two calls: `env gpu-tests bench`, then `env suite` with
#            SUITE_SELECTION="not xla and not gpu";
#   dist/deps/*.whl       wheels of requirements the machine may lack (pluggy, tqdm, pyyaml, nvidia-ml-py,
#                         pytest-xdist, execnet, pytest-timeout; see docs/benchmarks.md), each installed into the
#                         same --target folder first when the machine has no distribution of that name;
#   dist/apex-25.04/apex  NVIDIA apex 25.04's source (git clone --branch 25.04 --depth 1
#                         https://github.com/NVIDIA/apex dist/apex-25.04), put on PYTHONPATH for the apex tests;
#   SUITE_SELECTION       the suite's -m expression (default "not xla", or "not xla and not gpu" after phase 2);
#   DRY_RUN=1             check this script on a machine without a GPU: no CUDA check, the benchmark runs with
#                         --cpu-dry-run (its numbers mean nothing), the GPU tests skip themselves.
# Exit status: 0 when every phase that ran passed, 3 when there is no usable GPU, else 1.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
out="${OUT:-$root/gpu-session-out}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
budget="${BUDGET:-540}"
start=$(date +%s)
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(env gpu-tests bench suite)
site="$out/site"
summary="$out/summary.md"
status=0
ran_gpu_tests=0

left() { echo $(( budget - ($(date +%s) - start) )); }
share() { local cap=$1 rest; rest=$(left); [ "$rest" -lt "$cap" ] && echo "$rest" || echo "$cap"; }
record() {  # phase, exit code, seconds, note
    printf '| %s | %s | %s s | %s |\n' "$1" "$2" "$3" "$4" >>"$summary"
    [ "$2" = 0 ] || status=1
}
install_wheels() {  # into $site, with pip when the machine has it, else unpacked (what pip does for pure Python)
    if "$python" -m pip --version >/dev/null 2>&1; then
        "$python" -m pip install --no-deps --no-index --disable-pip-version-check --target "$site" "$@"
    else
        for wheel in "$@"; do "$python" -m zipfile -e "$wheel" "$site"; done
    fi
}
pytest_line() { grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran' "$1" | tail -1 | tr -d '='; }

printf '# GPU session %s%s\n\n| phase | exit | time | result |\n|---|---|---|---|\n' "$(date -u +%FT%TZ)" "$([ "${DRY_RUN:-0}" = 1 ] && echo ' (DRY_RUN: no GPU, nothing measured)')" >"$summary"

# ------------------------------------------------------------------------------------------------------- env
dry_run="${DRY_RUN:-0}"
if [ "$dry_run" != 1 ] && ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        >"$out/cuda-check.log" 2>&1; then
    "$python" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)' >>"$out/cuda-check.log" 2>&1
    record env 3 0 "no usable GPU: torch.cuda.is_available() is not True with $python (see cuda-check.log); nothing ran"
    cat "$summary"
    exit 3
fi
{
    nvidia-smi || true
    "$python" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "CUDA", torch.version.cuda,
"cuDNN", torch.backends.cudnn.version(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])'
    "$python" -m pip list 2>/dev/null
} >"$out/env.txt" 2>&1

t0=$(date +%s)
{
    rm -rf "$site" && mkdir -p "$site"
    if ! ls dist/wheels/torchplug-*.whl >/dev/null 2>&1; then
        echo "dist/wheels has no torchplug wheel: building them here (needs setuptools in $python)"
        PYTHON="$python" scripts/build_wheels.sh dist/wheels
    fi
    for wheel in dist/deps/*.whl; do  # only what the machine lacks; wheels for another Python fail and are skipped
        [ -e "$wheel" ] || continue
        name="$(basename "$wheel" | cut -d- -f1)"
        if ! "$python" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$name" 2>/dev/null; then
            install_wheels "$wheel" || echo "skipped $wheel"
        fi
    done
    install_wheels dist/wheels/torchplug*.whl
} >"$out/install.log" 2>&1
install_rc=$?
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
[ -d dist/apex-25.04/apex ] && export PYTHONPATH="$PYTHONPATH:$root/dist/apex-25.04"
"$python" - >>"$out/install.log" 2>&1 <<'PY'
import importlib, importlib.metadata as md
for name in ("torchplug", "torchplug_cuda", "torchplug_amp", "torchplug_apex", "torchplug_ddp", "torchplug_dp",
             "pluggy", "tqdm", "yaml", "pynvml", "pytest", "xdist", "pytest_timeout", "apex.amp"):
    try:
        module = importlib.import_module(name)
        print(f"{name:16} {getattr(module, '__file__', '?')}")
    except Exception as err:
        print(f"{name:16} NOT IMPORTABLE: {type(err).__name__}: {err}")
PY
"$python" -c 'import torchplug, sys; sys.exit(0 if torchplug.__file__.startswith(sys.argv[1]) else 1)' "$site" \
    >>"$out/install.log" 2>&1 || install_rc=1
record install "$install_rc" $(( $(date +%s) - t0 )) "wheels --no-deps --target $site (install.log: what imports from where)"
if [ "$install_rc" != 0 ]; then
    cat "$summary"
    exit 1
fi

xdist=0
"$python" -c 'import xdist' 2>/dev/null && xdist=1
timeout_opt=()
"$python" -c 'import pytest_timeout' 2>/dev/null && timeout_opt=(--timeout 900)

for phase in "${phases[@]}"; do
    t0=$(date +%s)
    if [ "$phase" != env ] && [ "$(left)" -lt 20 ]; then
        record "$phase" 124 0 "not run: the budget of ${budget} s was spent"
        continue
    fi
    case "$phase" in
    env) ;;
    gpu-tests)
        limit=$(share 300)
        timeout --signal=INT -k 15 "$limit" "$python" -m pytest -m gpu -p no:xdist "${timeout_opt[@]}" -rA \
            --junitxml "$out/gpu-tests.xml" >"$out/gpu-tests.log" 2>&1
        rc=$?
        ran_gpu_tests=1
        record gpu-tests "$rc" $(( $(date +%s) - t0 )) "$(pytest_line "$out/gpu-tests.log") (limit ${limit} s)"
        ;;
    bench)
        limit=$(share 180)
        dry=(); [ "$dry_run" = 1 ] && dry=(--cpu-dry-run)
        timeout --signal=INT -k 15 "$limit" "$python" benchmarks/gpu.py --size small --warmup 5 --steps 30 \
            --repeats 1 --json "$out/gpu-bench-small.json" "${dry[@]}" >"$out/bench.log" 2>&1
        rc=$?
        record bench "$rc" $(( $(date +%s) - t0 )) "benchmarks/gpu.py --size small (bench.log) (limit ${limit} s)"
        ;;
    suite)
        limit=$(left)
        selection="not xla"
        [ "$ran_gpu_tests" = 1 ] && selection="not xla and not gpu"
        selection="${SUITE_SELECTION:-$selection}"
        workers=()
        if [ "$xdist" = 1 ]; then
            n=$(( $(nproc) / 2 )); [ "$n" -gt 8 ] && n=8; [ "$n" -lt 2 ] && n=2
            workers=(-n "$n" --dist loadgroup)
        fi
        timeout --signal=INT -k 15 "$limit" "$python" -m pytest -m "$selection" "${workers[@]}" "${timeout_opt[@]}" \
            --junitxml "$out/suite.xml" >"$out/suite.log" 2>&1
        rc=$?
        record suite "$rc" $(( $(date +%s) - t0 )) "$(pytest_line "$out/suite.log") (-m '$selection', limit ${limit} s)"
        ;;
    *)
        record "$phase" 2 0 "unknown phase (use env, gpu-tests, bench, suite)"
        ;;
    esac
done
cat "$summary"
exit "$status"
