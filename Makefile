# Two commands for a newcomer: `make run` (main job, embedded default) and `make test`.
# Both create .venv if missing and install torch (CPU wheel) first, then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run sweep test lint bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 's3tokenizer>=0.3.0'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) workflows/full_run.py

sweep: setup
	$(PY) workflows/sweep.py

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
