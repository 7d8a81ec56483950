# torchplug: `make demo` and `make test` set everything up from nothing; both are idempotent.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PLUGINS := $(sort $(wildcard plugins/torchplug-*))
# Rebuild the environment when any distribution's metadata changes (entry points live there).
SETUP_INPUTS := core/pyproject.toml $(wildcard plugins/torchplug-*/pyproject.toml) Makefile

.PHONY: demo test test-fast test-xla setup setup-xla setup-oracle lint bench clean

demo: $(VENV)/.installed
	$(PY) examples/demo.py

test: $(VENV)/.installed setup-oracle setup-xla
	$(PY) -m pytest -n 2 --dist loadgroup -m "not xla" $(PYTEST_ARGS)
	$(MAKE) test-xla

# Everything but the XLA suite, which needs its own environment (see docs/xla.md).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadgroup -m "not xla" $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: $(SETUP_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e 'core[tensorboard,plot]' $(addprefix -e ,$(PLUGINS)) \
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

lint: $(VENV)/.installed
	$(PY) -m pip -q install ruff && $(VENV)/bin/ruff check core plugins tests benchmarks examples

# Lightning is only a point of comparison for the benchmarks, never a dependency.
bench: $(VENV)/.installed
	$(PIP) install pytorch-lightning
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(XLA_VENV) $(ORACLE_VENV)
