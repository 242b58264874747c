# Quadrant: the two commands of the quick start, and a few more.
#   make demo   bring up the lab, start the controller against it, show it working
#   make test   lint, build and run every test (installs what it needs first)

VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup test lint unit demo bench clean

setup:
	@VENV=$(VENV) tools/setup-host

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/cython-lint --max-line-length 100 cext/

test: lint
	$(PY) -m pytest -q tests

unit: setup
	$(PY) -m pytest -q tests/unit

demo: setup
	$(PY) -m tools.demo

clean:
	rm -rf build *.egg-info cext/*.c cext/*.so .pytest_cache
