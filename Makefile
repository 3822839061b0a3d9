# The commands people actually run.  `make demo` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build cached on this project's machines; elsewhere pip fetches it.
TORCH ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) "$(TORCH)"
	$(PY) -m pip install -q $(FIND_LINKS) -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/matteforge demo --data demo-data --output demo-output

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo-data demo-output .pytest_cache
