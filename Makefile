# rayfun: two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
SDK_VENV ?= .venv-sdk
FLOOR_VENV ?= .venv-floor
PYARROW_FLOOR := $(shell sed -n 's/.*"pyarrow>=\([0-9.]*\)".*/\1/p' pyproject.toml)
PY := $(VENV)/bin/python

.PHONY: install venvs demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,lint,kafka,s3]"
	touch $@

# The official StateFun SDK pins protobuf<4, so it lives in its own interpreter (tests run its servers there).
$(SDK_VENV)/.installed:
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install -q "apache-flink-statefun==3.3.0" aiohttp
	touch $@

# The lowest pyarrow rayfun allows, alone: a test reads a crafted Parquet file with it (must run no code).
$(FLOOR_VENV)/.installed-$(PYARROW_FLOOR): pyproject.toml
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q "pyarrow==$(PYARROW_FLOOR)" "numpy<2"
	touch $@

install: $(VENV)/.installed

# Every interpreter the tests use; `make -j3 venvs` builds them side by side (CI does).
venvs: $(VENV)/.installed $(SDK_VENV)/.installed $(FLOOR_VENV)/.installed-$(PYARROW_FLOOR)

# The main job: the fraud-detection showcase (Kafka in and out, checkpoints in ./checkpoints/fraud),
# then the greeter and the cyclic ping-pong.
demo: $(VENV)/.installed
	$(PY) -m examples.fraud
	$(PY) examples/greeter.py
	$(PY) examples/ping_pong.py

# Style and types: ruff (lint + format check) on everything, mypy on the package.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed $(SDK_VENV)/.installed $(FLOOR_VENV)/.installed-$(PYARROW_FLOOR)
	RAYFUN_SDK_PYTHON=$(SDK_VENV)/bin/python $(PY) -m pytest -q

test-fast: $(VENV)/.installed $(SDK_VENV)/.installed
	RAYFUN_SDK_PYTHON=$(SDK_VENV)/bin/python $(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed $(SDK_VENV)/.installed
	$(PY) bench/counter.py
	$(PY) bench/checkpoint_overhead.py
	$(PY) bench/recovery.py
	$(PY) bench/checkpoint_io.py
	$(PY) bench/memory.py
	$(PY) bench/rescale.py
	$(PY) bench/baseline_ray.py
	$(PY) bench/scaling.py
	$(PY) bench/latency.py
	RAYFUN_SDK_PYTHON=$(SDK_VENV)/bin/python $(PY) bench/remote.py

clean:
	rm -rf $(VENV) $(SDK_VENV) $(FLOOR_VENV) checkpoints .pytest_cache
