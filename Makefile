# Quick start: `make demo` (install + small end-to-end run) and `make test` (install + test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONHASHSEED ?= 0

.PHONY: install test test-all lint demo bench gpu-bundle clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .  # the bfm package and its three commands (deps: above)
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q --numprocesses=auto --maxprocesses=4

test-all: install
	$(PY) -m pytest -q -m '' --numprocesses=auto --maxprocesses=4

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: install
	$(PY) scripts/demo.py

bench: install
	$(PY) -m benchmarks --quick

# The wheels a GPU machine without the project's dependencies needs (scripts/gpu_check.py installs them there).
gpu-bundle: install
	$(PY) scripts/gpu_bundle.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
