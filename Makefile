# Two commands: `make demo` (train + sample + sync table on CPU) and `make test` (the suite);
# `make lint` runs ruff (configured in pyproject.toml) as CI does.
# Both create the virtual environment they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint install install-dev clean

$(VENV)/.run-deps: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt requirements-nodeps.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

install: $(VENV)/.run-deps
install-dev: $(VENV)/.dev-deps

demo: $(VENV)/.run-deps
	JAX_PLATFORMS=cpu $(PY) -m harmony_jax.demo --config configs/demo.py --workdir runs/demo

# Two passes (tests/conftest.py): the tests that need a mesh on 8 simulated devices, the rest on
# one device, where they compile and run faster; the second pass runs even if the first fails,
# a file per worker (its module fixtures, the meshes' trainings, are built once).
test: $(VENV)/.dev-deps
	status=0; \
	HARMONY_TEST_DEVICES=1 JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --durations=10 \
		-m "not devices" tests || status=$$?; \
	HARMONY_TEST_DEVICES=8 JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --dist loadfile --durations=5 \
		-m devices tests || status=$$?; \
	exit $$status

lint: $(VENV)/.dev-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf runs .jax_cache
