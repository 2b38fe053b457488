# Two entry points on a fresh machine with Python 3.11:
#   make demo   -> creates .venv, installs the package, runs the Lorenz-63 assimilation demo
#   make test   -> creates .venv, installs the package with its test extra, runs lint + tests
# Python 3.12 installs ArviZ 1.x instead of 0.23 (see pyproject.toml); both work, e.g.
#   make test PYTHON=python3.12 VENV=.venv312
# .ci/run runs `make test` with both.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: demo test lint test-slow bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/numpyro-sda demo --out $(OUT)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check numpyro_sda tests examples benchmarks

test: lint
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/sampling.py --quick
	$(PY) benchmarks/baselines.py

clean:
	rm -rf $(VENV) .venv312 out .pytest_cache .ruff_cache
