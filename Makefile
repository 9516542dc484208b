# One command each: `make demo`, `make test`. Both build .venv from requirements*.txt first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: venv demo test test-cluster lint bench bench-quick clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: venv
	PY=$(PY) bash scripts/demo.sh

test: venv lint
	$(PY) -m pytest -q tests

# Only the multi-node tests (3-node cluster, fail-over); `make test` runs them too.
test-cluster: venv
	$(PY) -m pytest -q -m cluster tests

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/run.py

bench-quick: venv
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) logs reports/*.jsonl .pytest_cache
