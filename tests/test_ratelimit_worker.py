"""A rate limit as workers live it (issue 31 item 1; docs/design/rate-limit.md): against the
real broker with real workers, the limit given by ``task_control.py rate-limit``.

Global: every task done once, as its first attempt, some of them after a wait for their turn.
Per key: a hot key's backlog ahead of another key's few tasks does not hold those up (order,
not timing), and a parked task comes back and runs once, its retries unchanged. The same file
runs on RabbitMQ 4.3 (scripts/rabbitmq4.sh test tests/test_ratelimit_worker.py).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.results.history import History
from tests.helpers import (
    MAIN_URL,
    done_rows,
    emit_run,
    queue_state,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)

SUMMARY_PARKED = re.compile(r"worker \S+: .*; (?P<parked>\d+) parked \(rate limit\)")


def control(queue: str, *command: str, logs: Path) -> None:
    done = run_script("task_control.py", *command, "--queue", queue, log_dir=logs)
    assert done.returncode == 0, done.stderr[-2000:]


def limit(queue: str, rate: str, *more: str, logs: Path) -> None:
    control(queue, "rate-limit", rate, *more, logs=logs)


def workers(queue: str, count: int, slots: int, tmp_path: Path, logs: Path, idle: str = "2"
            ) -> tuple[list[subprocess.Popen], list[Path]]:
    outs = [tmp_path / f"w{n}.out" for n in range(1, count + 1)]
    started = [start_worker("--queue", queue, "--name", f"w{n}", "--concurrency", str(slots),
                            "--seconds-per-dot", "0.02", "--exit-when-idle", idle,
                            log_dir=logs, out=out)
               for n, out in enumerate(outs, 1)]
    return started, outs


def wait_exit(started: list[subprocess.Popen], outs: list[Path]) -> None:
    for worker, out in zip(started, outs):
        assert worker.wait(timeout=180) == 0, out.read_text()[-3000:]


def task_records(queue: str, run: str, directory: Path) -> list[dict]:
    history = History(BrokerSettings([MAIN_URL]), QueueSpec(queue), directory)
    return [r for r in history.run_records(run)() if r.get("kind") in (None, "task")]


def assert_each_done_once(records: list[dict], rows: int) -> None:
    outcomes = Counter(record["outcome"] for record in records)
    assert outcomes == {"done": rows}, outcomes
    assert len({record["row"] for record in records}) == rows, "each row once"
    assert {record["attempt"] for record in records} == {1}, "waiting is no attempt"


def assert_no_task_left(queue: str) -> None:
    spec = QueueSpec(queue)
    for name in [spec.name, spec.retry_name, spec.dead_name, *spec.wait_names]:
        state = queue_state(name)
        assert state is None or state[0] == 0, (name, state)


def test_a_global_limit_runs_every_task_once_some_after_a_wait(queue: str, logs: Path,
                                                                tmp_path: Path):
    rows = 20
    tasks = write_csv(tmp_path / "tasks.csv", [f"t{n}." for n in range(1, rows + 1)])
    run = emit_run("--queue", queue, "--file", str(tasks), logs=logs)
    limit(queue, "5/s", logs=logs)
    started, outs = workers(queue, 2, 2, tmp_path, logs)
    wait_exit(started, outs)
    records = task_records(queue, run, tmp_path / "h")
    assert_each_done_once(records, rows)
    waited = [record["waited"] for record in records if "waited" in record]
    assert len(waited) == rows, "every start under the limit asked for its turn"
    assert max(waited) > 0, waited
    starts = sorted(float(record["started"]) for record in records)
    print(f"\n{rows} tasks at 5/s: starts over {starts[-1] - starts[0]:.2f} s, "
          f"longest wait {max(waited):.2f} s")
    assert_no_task_left(queue)


def test_per_key_a_hot_backlog_does_not_hold_up_another_key(queue: str, logs: Path,
                                                            tmp_path: Path):
    hot, cold = 30, 3
    lines = ["job,host"] + [f"h{n}.,hot.example" for n in range(1, hot + 1)] + [
        f"c{n}.,cold.example" for n in range(1, cold + 1)]
    tasks = write_csv(tmp_path / "tasks.csv", lines)
    run = emit_run("--queue", queue, "--file", str(tasks), "--header", "--column", "job",
               "--key-column", "host", logs=logs)
    limit(queue, "2/s", "--per-key", logs=logs)
    started, outs = workers(queue, 2, 2, tmp_path, logs)
    wait_exit(started, outs)
    records = task_records(queue, run, tmp_path / "h")
    assert_each_done_once(records, hot + cold)
    by_start = sorted(records, key=lambda record: float(record["started"]))
    order = [record["task"][0] for record in by_start]
    last_cold = max(i for i, kind in enumerate(order) if kind == "c")
    hot_after = order[last_cold + 1:].count("h")
    assert hot_after >= 10, f"the other key's tasks started after the hot key's last " \
                            f"{hot_after}: {''.join(order)}"
    parked = [record for record in records if record.get("parks")]
    assert parked, "the hot key's backlog was parked"
    said = sum(int(m["parked"]) for out in outs for m in SUMMARY_PARKED.finditer(
        out.read_text()))
    assert said >= len(parked), (said, len(parked))
    print(f"\nstart order: {''.join(order)}; {len(parked)} of {hot + cold} tasks parked "
          f"(up to {max(record['parks'] for record in parked)} times), {said} parks and hops")
    assert_no_task_left(queue)


def test_a_parked_task_comes_back_and_runs_once(queue: str, logs: Path, tmp_path: Path):
    """Three tasks of one key at 6/min: the third waits ~22 s, 16 of them in the 16-s tier,
    while nothing else comes: --exit-when-idle 1 waits for the worker's parked tasks to come
    back (a worker that did not count them exited with the task still parked)."""
    lines = ["job,host"] + [f"p{n}.,one.example" for n in range(1, 4)]
    tasks = write_csv(tmp_path / "tasks.csv", lines)
    run = emit_run("--queue", queue, "--file", str(tasks), "--header", "--column", "job",
               "--key-column", "host", logs=logs)
    limit(queue, "6/min", "--per-key", logs=logs)
    started, outs = workers(queue, 1, 3, tmp_path, logs, idle="1")
    wait_exit(started, outs)
    records = task_records(queue, run, tmp_path / "h")
    assert_each_done_once(records, 3)
    parked = [record for record in records if record.get("parks")]
    assert len(parked) == 3, "three at once at 6/min, after a quiet start: all parked"
    assert all(record["attempt"] == 1 for record in parked), "x-retries unchanged"
    assert "parked (rate limit)" in outs[0].read_text()
    assert_no_task_left(queue)


def test_a_pause_parks_the_tasks_waiting_for_their_turn(queue: str, logs: Path,
                                                        tmp_path: Path):
    """Global 1/s, 4 slots: the slots hold tasks waiting their turn (waits under 30 s are held,
    never parked). A pause parks them (their slots free, nothing starts while paused); after
    the resume every task is done once, as its first attempt."""
    rows = 12
    tasks = write_csv(tmp_path / "tasks.csv", [f"t{n}." for n in range(1, rows + 1)])
    run = emit_run("--queue", queue, "--file", str(tasks), logs=logs)
    limit(queue, "1/s", logs=logs)
    started, outs = workers(queue, 1, 4, tmp_path, logs)
    wait_for(lambda: len(done_rows(*outs)) >= 2, timeout=60, what="two tasks done")
    control(queue, "pause", logs=logs)
    wait_for(lambda: "parked row" in outs[0].read_text(), timeout=30,
             what="the waiting tasks parked")
    time.sleep(1.5)  # a task whose firm ticket came just before the pause may still start
    done_at_pause = len(done_rows(*outs))
    time.sleep(3.0)
    assert len(done_rows(*outs)) == done_at_pause, "a task started while paused"
    control(queue, "resume", logs=logs)
    wait_exit(started, outs)
    records = task_records(queue, run, tmp_path / "h")
    assert_each_done_once(records, rows)
    assert any(record.get("parks") for record in records), "a parked task came back"
    assert_no_task_left(queue)
