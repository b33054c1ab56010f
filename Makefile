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

# pytest-xdist options; empty: one process (~30 min on 2 cores). `make test XDIST="-n 2 --dist loadfile
# --no-loadscope-reorder"` runs two workers, a file at a time, in conftest.py's longest-first order (12.7-14 min:
# most of a test's time is processes starting, which two workers overlap). Not the default yet: under two workers
# test_fold_tasks_overlap_in_time failed twice (one fold ended before the other's worker was ready). Three workers
# were no faster (19 min) and overloaded the machine (two multi-node clusters failed to start).
XDIST :=

test: lint  ## the lint, then the whole test suite (CPU, local Ray, ~30 min on 2 cores)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
