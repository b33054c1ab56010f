# `make demo` and `make test` do all set-up on a fresh machine: a virtualenv in .venv with raydf installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]" -c constraints.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed  ## train on the built-in demo data (2 folds, ~3 min on 2 CPU cores)
	$(PY) -m raydf.train

lint: $(VENV)/.installed  ## the layer rule (import-linter) and ruff (lint + format check)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check raydf tests benchmarks
	$(VENV)/bin/ruff format --check raydf tests benchmarks

# Two pytest workers, a test file at a time each (module fixtures are built once), in the order conftest.py
# gives (longest files first; xdist would otherwise start with the files of most tests): most of a test's time is
# processes starting (Python, Ray, workers) and waiting on each other, which two workers overlap on 2 cores.
# Three were no faster (19 min) and overloaded the machine: two multi-node tests failed to start their clusters.
# Not yet the default: under 2 workers test_fold_tasks_overlap_in_time failed twice (one fold's worker imported its
# modules while the other fold finished). Until that is fixed, one process (~30 min); `make test XDIST="-n 2
# --dist loadfile --no-loadscope-reorder"` runs the 2-worker suite (12.7-14 min).
XDIST :=

test: lint  ## the lint, then the whole test suite (CPU, local Ray, < 15 min on 2 cores)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
