# One command each: `make demo`, `make test` (`make test-fast`: the part that needs no broker).
# Each builds .venv from requirements*.txt first, then runs the Python entry points
# (scripts/demo.py, scripts/check.py), which work without make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: bench-cycle bench-peers bench-scale venv demo test test-fast test-cluster test-rabbitmq4 test-windows lint bench bench-quick soak chaos chaos-ci bench-views bench-requeue bench-versus bench-records bench-web clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: venv
	$(PY) scripts/demo.py

test: venv
	$(PY) scripts/check.py

# ruff, mypy and the tests marked fast (no broker, no connection, no process): under a minute.
# `make test` runs the same first, then the rest of the suite.
test-fast: venv
	$(PY) scripts/check.py --fast

# Only the multi-node tests (3-node cluster, fail-over); `make test` runs them too.
test-cluster: venv
	$(PY) scripts/check.py -m cluster

# The whole suite against RabbitMQ 4.3 (Debian forky's rabbitmq-server, Erlang 29, Python
# 3.13+), in a chroot on a network namespace of its own: the machine's broker is not touched.
# The first run builds the chroot (a few minutes; root). ARGS=tests/test_tls.py runs one file.
ARGS ?=
test-rabbitmq4:
	bash scripts/rabbitmq4.sh test $(ARGS)

# Windows: the official embeddable CPython 3.13 x64 under wine64 (scripts/windows.sh builds it,
# cached): the whole suite must collect, then the tests marked windows run (ARGS=… adds pytest
# arguments).
test-windows: venv
	bash scripts/windows.sh test $(ARGS)

# Resilience figures (many workers, a network path gone silent, duplicates): a few minutes;
# not part of `make test`. Writes bench/soak.md.
soak: venv
	$(PY) bench/soak.py

# A randomized fault run (bench/chaos.py): faults drawn from a seed, invariants checked at the
# end. `make chaos` takes a new seed (printed) and runs 3 minutes; CHAOS="--seed 7 --duration
# 600 --setup cluster" replays or lengthens one. CI runs chaos-ci: a fixed seed, about a minute.
CHAOS ?=
chaos: venv
	$(PY) bench/chaos.py $(CHAOS)

chaos-ci: venv
	$(PY) bench/chaos.py --seed 16 --duration 40 --setup single

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/run.py
	$(PY) bench/versus.py

bench-quick: venv
	$(PY) bench/run.py --quick
	$(PY) bench/versus.py --quick

# The report at 10k, 100k and 1M task events and the live view with 200 x 8 slots (a few
# minutes); writes bench/views.md.
bench-views: venv
	$(PY) bench/views.py --write

# task_control.py requeue-dead with 10k and 1M dead tasks (a few minutes); bench/requeue.md.
bench-requeue: venv
	$(PY) bench/requeue.py --write

# This tree's worker against today's code (f364aa4, taken out with git archive), both run as
# scripts, alternating, best of 3 (a few minutes); writes bench/versus.md.
# VERSUS="--against REF --ours-dir DIR --quick" changes what is compared.
VERSUS ?=
bench-versus: venv
	$(PY) bench/versus.py $(VERSUS)

# The results record with 10k, 100k and 1M records: the report's --csv and --skip-done, each
# in a process of its own (a few minutes); writes bench/records.md.
bench-records: venv
	$(PY) bench/records.py --write

# The web view: memory at 1M records read, the first page of a 100k-task run; bench/web.md.
bench-web: venv
	$(PY) bench/web.py --write

clean:
	rm -rf $(VENV) logs reports/*.jsonl .pytest_cache

# Ours against the minimal loop, Dramatiq + Results and Celery + Redis backend (bench/peers.py;
# makes bench/out/peers-venv from PyPI on first use); about 12 min; writes bench/peers.md.
PEERS ?=
bench-peers: venv
	$(PY) bench/peers.py $(PEERS)

# One task's cycle at 1 slot from the loopback's packets, ours against the minimal loop
# (bench/cycle.py; root and tcpdump); writes bench/cycle.md.
CYCLE ?=
bench-cycle: venv
	$(PY) bench/cycle.py $(CYCLE)

# Broker cost per task against the number of workers (bench/scale.py; root: a private node in
# a network namespace of its own, 64 KiB TCP buffers: see bench/scale.md); writes bench/scale.md.
SCALE ?=
bench-scale: venv
	$(PY) bench/scale.py --private-broker --tcp-buffer 65536 $(SCALE)
