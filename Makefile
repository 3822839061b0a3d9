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
# tests/test_report.py opens the HTML report in Debian's chromium; where it cannot be installed
# (no apt-get, not root) that one test is skipped.
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		{ apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } \
		|| echo "chromium not installed: tests/test_report.py will skip its browser test"
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
