# Two commands for a newcomer: `make run` (main job, embedded default) and `make test`.
# Both create .venv if missing and install torch (CPU wheel) first, then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run sweep test lint bench lock

# constraints.txt pins every dependency to the versions tested here (a pip constraints file: it fixes versions,
# it does not add packages); `make lock` rewrites it from the current .venv after an upgrade.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt 's3tokenizer>=0.3.0'
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

# Re-pin: upgrade inside .venv (e.g. `.venv/bin/pip install -U transformers`), run `make test`, then `make lock`.
# torch is left out: the Makefile installs the CPU wheel torch==2.13.0 itself, clusters their CUDA build.
lock: setup
	{ echo "# pip constraints: the dependency versions make run / make test / CI install (written by make lock)"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt
