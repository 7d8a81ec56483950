# torchplug: `make demo` and `make test` set everything up from nothing; both are idempotent.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PLUGINS := $(sort $(wildcard plugins/torchplug-*))
# Rebuild the environment when any distribution's metadata changes (entry points live there).
SETUP_INPUTS := core/pyproject.toml $(wildcard plugins/torchplug-*/pyproject.toml) Makefile
# The suite starts hundreds of Python processes (ranks, spawned jobs, the oracle): let them cache their bytecode even
# where the shell says not to (an empty value means "write"); each saves about 0.5 s of compiling torchplug.
export PYTHONDONTWRITEBYTECODE =

.PHONY: demo test test-fast test-xla test-gpu test-wheels wheels setup setup-xla setup-oracle lint bench clean

demo: $(VENV)/.installed
	$(PY) examples/demo.py

# --dist loadscope keeps a module's (or a test class's) tests on one worker: a conformance class's checks share
# worker processes, and the SLURM tests their one cluster. (--dist loadgroup no longer groups anything: xdist 3.8
# tags node ids through a field that pytest 9 does not read.)
DIST := -n 2 --dist loadscope

test: $(VENV)/.installed setup-oracle setup-xla
	$(PY) -m pytest $(DIST) -m "not xla" $(PYTEST_ARGS)
	$(MAKE) test-xla

# Everything but the XLA suite, which needs its own environment (see docs/xla.md).
test-fast: $(VENV)/.installed
	$(PY) -m pytest $(DIST) -m "not xla" $(PYTEST_ARGS)

# The GPU tests (marker gpu) and a short GPU benchmark, in the same .venv; needs a CUDA build of torch and a GPU,
# and says so (exit 2) where there is none: there, `make test` runs everything else and the GPU tests skip themselves.
test-gpu: $(VENV)/.installed
	@$(PY) -c "$$GPU_CHECK"
	$(PY) -m pytest -m gpu -p no:xdist $(PYTEST_ARGS)
	$(PY) benchmarks/gpu.py --size small --warmup 5 --steps 30 --repeats 1

define GPU_CHECK
import sys, torch
if not torch.cuda.is_available():
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    print(f"make test-gpu: no CUDA GPU is visible here (torch.cuda.is_available() is False; torch {torch.__version__} "
          f"is {build}); nothing was run. On a GPU machine .venv needs a CUDA build of torch (PyPI's Linux wheels "
          "are; see https://pytorch.org/get-started/locally/)", file=sys.stderr)
    sys.exit(2)
endef
export GPU_CHECK

setup: $(VENV)/.installed

$(VENV)/.installed: $(SETUP_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e 'core[tensorboard,plot,rich,cli,stats]' $(addprefix -e ,$(PLUGINS)) \
		pytest pytest-xdist pytest-timeout torchmetrics
	touch $@

# PyTorch Lightning as the oracle of tests/lightning_oracle (its own environment: never a dependency of torchplug).
ORACLE_VENV := .venv-oracle
ORACLE_PY := $(ORACLE_VENV)/bin/python

setup-oracle: $(ORACLE_VENV)/.installed

$(ORACLE_VENV)/.installed: Makefile
	test -x $(ORACLE_PY) || $(PYTHON) -m venv $(ORACLE_VENV)
	$(ORACLE_PY) -m pip --disable-pip-version-check -q install torch==2.13.0
	$(ORACLE_PY) -m pip --disable-pip-version-check -q install pytorch-lightning==2.6.6 torchmetrics
	touch $@

# PyTorch/XLA needs torch==2.9.0 exactly, so it lives in a second environment.
XLA_VENV := .venv-xla
XLA_PY := $(XLA_VENV)/bin/python
XLA_PLUGIN := $(wildcard plugins/torchplug-xla)

setup-xla: $(if $(XLA_PLUGIN),$(XLA_VENV)/.installed)

$(XLA_VENV)/.installed: $(SETUP_INPUTS)
	test -x $(XLA_PY) || $(PYTHON) -m venv $(XLA_VENV)
	$(XLA_PY) -m pip --disable-pip-version-check -q install torch==2.9.0 torch-xla==2.9.0
	$(XLA_PY) -m pip --disable-pip-version-check -q install -e core -e plugins/torchplug-amp -e $(XLA_PLUGIN) pytest pytest-timeout
	touch $@

test-xla: $(if $(XLA_PLUGIN),$(XLA_VENV)/.installed)
	$(if $(XLA_PLUGIN),PJRT_DEVICE=CPU $(XLA_PY) -m pytest -m xla $(XLA_PLUGIN)/tests,@echo "no XLA plugin")

# torchplug's wheels installed with pip install --no-deps --target and found through PYTHONPATH only, in a .venv-wheels
# that has torch and the test dependencies alone: how GPU clusters without network install it (scripts/test_installed.sh).
WHEELS_VENV := .venv-wheels
WHEELS_PY := $(WHEELS_VENV)/bin/python

wheels: $(VENV)/.installed
	PYTHON=$(PY) scripts/build_wheels.sh dist/wheels

$(WHEELS_VENV)/.installed: Makefile
	test -x $(WHEELS_PY) || $(PYTHON) -m venv $(WHEELS_VENV)
	$(WHEELS_PY) -m pip --disable-pip-version-check -q install torch==2.13.0 pytest pytest-xdist pytest-timeout \
		setuptools wheel tensorboard matplotlib pluggy tqdm pyyaml nvidia-ml-py rich 'jsonargparse[signatures]>=4.39' psutil \
		torchmetrics
	touch $@

test-wheels: wheels $(WHEELS_VENV)/.installed
	scripts/test_installed.sh $(WHEELS_PY) dist/wheels $(DIST) -m "not xla" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m pip -q install ruff && $(VENV)/bin/ruff check core plugins tests benchmarks examples scripts

# Lightning is only a point of comparison for the benchmarks, never a dependency.
bench: $(VENV)/.installed
	$(PIP) install pytorch-lightning==2.6.6
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(XLA_VENV) $(ORACLE_VENV) $(WHEELS_VENV)
