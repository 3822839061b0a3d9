# The commands people actually run.  `make demo` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build cached on this project's machines; elsewhere pip fetches it.
TORCH ?= torch==2.13.0
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup test-setup demo test test-fast lint clean

setup: $(VENV)/.installed

# The tests' set-up: the venv, plus Debian's chromium for the one browser test of the HTML
# report (tests/test_report.py), by tools/install_browser.sh only when no package already on
# the machine would change; where that cannot be done (no apt-get, not root, or chromium would
# need other packages upgraded) the browser test skips with a message. The demo needs no browser.
test-setup: $(VENV)/.browser

$(VENV)/.browser: $(VENV)/.installed
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || \
		tools/install_browser.sh \
		|| echo "chromium not installed: tests/test_report.py will skip its browser test"
	touch $@

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(FIND_LINKS) "$(TORCH)"
	$(PY) -m pip install -q $(FIND_LINKS) -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/matteforge demo --data demo-data --output demo-output

test: test-setup
	$(PY) -m pytest

test-fast: test-setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo-data demo-output .pytest_cache
