# floodwarn: `make demo` and `make test` work from a clean clone with Python 3.11+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench clean help

help:
	@echo "make demo   - install into .venv and run the demo storm as a drill"
	@echo "make test   - install test dependencies into .venv and run the tests"
	@echo "make bench  - benchmark the terrain kernels against pysheds"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[test]'
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/floodwarn prepare --config config/demo.toml
	$(VENV)/bin/floodwarn demo --config config/demo.toml

# The PostgreSQL tests skip, with the reason, when FLOODWARN_TEST_POSTGRES_URL is not set.
# Two worker processes (pytest-xdist): many tests wait on subprocesses, servers and sockets.
test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[test,bench]'
	@touch $@

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_terrain.py

clean:
	rm -rf out .pytest_cache
