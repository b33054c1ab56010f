# `make demo` and `make test` do all set-up on a fresh machine: a virtualenv in .venv with raydf installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]" -c constraints.txt
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed  ## train on the built-in demo data (2 folds, ~3 min on 2 CPU cores)
	$(PY) -m raydf.train

test: $(VENV)/.installed  ## the whole test suite (CPU, local Ray, < 10 min on 2 cores)
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
