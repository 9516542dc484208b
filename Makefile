# One command each: `make demo`, `make test`. Both build .venv from requirements*.txt first,
# then run the Python entry points (scripts/demo.py, scripts/check.py), which work without make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: venv demo test test-cluster lint bench bench-quick soak clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: venv
	$(PY) scripts/demo.py

test: venv
	$(PY) scripts/check.py

# Only the multi-node tests (3-node cluster, fail-over); `make test` runs them too.
test-cluster: venv
	$(PY) scripts/check.py -m cluster

# Resilience figures (many workers, a network path gone silent, duplicates): a few minutes;
# not part of `make test`. Writes bench/soak.md.
soak: venv
	$(PY) bench/soak.py

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/run.py

bench-quick: venv
	$(PY) bench/run.py --quick

clean:
	rm -rf $(VENV) logs reports/*.jsonl .pytest_cache
