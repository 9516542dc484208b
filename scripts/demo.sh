#!/usr/bin/env bash
# make demo: publish tasks.csv, let 3 workers share it, show who did what. Exits when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUEUE=${DEMO_QUEUE:-demo_task_queue}
SPD=${DEMO_SECONDS_PER_DOT:-0.2}

echo "== 1. emitter: tasks.csv -> queue '$QUEUE' (every message persistent and confirmed)"
"$PY" emitter_of_tasks.py --queue "$QUEUE" --file tasks.csv --no-admin

echo "== 2. three workers share the queue (prefetch 1: whoever is free takes the next task)"
pids=()
for name in alice bob carol; do
  "$PY" listening_worker.py --queue "$QUEUE" --name "$name" --seconds-per-dot "$SPD" \
    --exit-when-idle 2 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[ "$status" -eq 0 ] || { echo "a worker failed (exit $status)" >&2; exit "$status"; }

echo "== 3. who did what"
"$PY" task_report.py --queue "$QUEUE"
