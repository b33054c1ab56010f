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

# Two pytest-xdist workers, a file at a time, in conftest.py's longest-first order: most of a test's time is
# processes starting (Python, Ray, fold workers), which two workers overlap (9-12 min on 2 cores, 16-18 min in one
# process: `make test XDIST=`). Three workers were no faster and overloaded the machine.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: lint  ## the lint, then the whole test suite (CPU, local Ray, 9-12 min on 2 cores)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
