# `make demo` and `make test` do all set-up on a fresh machine: a virtualenv in .venv with raydf installed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint install browser clean

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
# processes starting (Python, Ray, fold workers), which two workers overlap (13.7 min on 2 cores; in one
# process: `make test XDIST=`). Three workers were no faster and overloaded the machine.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

# Debian's chromium and chromedriver, for the test that drives the web page of `raydf.serve` in a real browser.
# Installed with apt-get when missing (as root, or through sudo); where that is not possible the test is skipped,
# except under CI, where it fails.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; then echo "installed chromium"; \
	else echo "warning: could not install chromium and chromium-driver: the browser test will be skipped"; fi

test: lint browser  ## the lint, then the whole test suite (CPU, local Ray, about 15 min on 2 cores)
	$(PY) -m pytest -q $(XDIST)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
