"""The views at scale (issue 18): the live view fitted to its terminal, the report of a big run
short and flat in memory, natural order, round time labels."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pika

from bench.views import write_events
from taskqueue.broker.config import QueueSpec
from taskqueue.views.live import LiveState, QueueCounts
from taskqueue.views.report import RunReport, run_attempts
from taskqueue.views.timeline import ticks
from tests.helpers import MAIN_URL, ROOT, script_env, wait_for
from tests.test_live import Tmux


def snapshot(worker: str, slots: int, now: float, first_row: int) -> dict:
    return {"kind": "snapshot", "worker": worker, "host": "h1", "time": now, "state": "running",
            "slots": [{"slot": f"{worker}/{n}", "state": "busy", "since": now - n,
                       "queued": now - 20, "row": first_row + n, "task": f"task {first_row + n}",
                       "done": n, "failed": 0} for n in range(1, slots + 1)]}


def test_the_live_view_keeps_its_header_on_a_small_terminal_and_follows_a_resize(queue,
                                                                                  logs):
    """10 workers x 4 slots in a 120x30 terminal: the queue and run lines stay on top, the
    workers fold to a line each (w2 before w10); made taller, every slot gets its line."""
    spec = QueueSpec(queue)
    terminal = Tmux([sys.executable, "task_report.py", "--watch", "--queue", queue],
                    script_env(logs), size=(120, 30))
    stop = threading.Event()

    def feed() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        channel = connection.channel()
        channel.exchange_declare(spec.exchange, "topic", durable=True)
        while not stop.is_set():
            now = time.time()
            body = json.dumps([snapshot(f"w{n}", 4, now, 4 * n) for n in range(1, 11)])
            channel.basic_publish(spec.exchange, "live", body.encode())
            stop.wait(0.5)
        connection.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        screen = wait_for(lambda: (text := terminal.screen()) and "w10 " in text and text,
                          timeout=30, what="the workers on screen")
        lines = screen.splitlines()
        assert lines[0].startswith(f"queue '{queue}'") and lines[1].startswith("run "), screen
        assert "last failures" in screen, screen
        assert "w1/1" not in screen, "40 slots do not fit in 30 rows: one line per worker"
        names = [line.split()[0] for line in lines if line[:1] == "w" and line[1:2].isdigit()]
        assert names == [f"w{n}" for n in range(1, 11)], names
        assert "4/4 busy: rows" in screen
        terminal.resize(120, 60)
        taller = wait_for(lambda: (text := terminal.screen()) and "w10/4" in text and text,
                          timeout=15, what="the slots after the resize")
        assert taller.splitlines()[0].startswith(f"queue '{queue}'")
    finally:
        stop.set()
        feeder.join(5)
        terminal.close()
        connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        connection.channel().exchange_delete(spec.exchange)
        connection.close()


def test_with_more_workers_than_rows_the_ones_that_matter_come_first():
    now = time.time()
    state = LiveState("q")
    for n in range(1, 201):
        state.feed(snapshot(f"w{n}", 8, now, 8 * n))
    state.feed({**snapshot("w150", 8, now - 30, 0)})  # not heard from for 30 s: gone
    stuck = snapshot("w77", 8, now, 0)
    stuck["slots"][0]["since"] = now - 600
    state.feed(stuck)
    state.counts = QueueCounts(100, 0, 0, 200)
    screen = state.screen(now, 120, 30)
    assert len(screen) <= 30
    assert screen[0].startswith("queue 'q'") and screen[1].startswith("run ")
    text = "\n".join(screen)
    assert "w150" in text and "gone" in text, "a gone worker is shown first"
    assert "w77 " in text and "longest 600 s" in text, "so is a stuck-looking one"
    assert "... and " in text and "more workers: 1" in text, text


def write_store(tmp_path, count: int):
    reports = tmp_path / f"r{count}"
    reports.mkdir()
    write_events(reports / "q.events.jsonl", count)
    return reports


def test_the_report_of_a_20000_task_run_is_short_small_and_flat_in_memory(tmp_path):
    reports = write_store(tmp_path, 20_000)
    result = subprocess.run([sys.executable, str(ROOT / "task_report.py"), "--queue", "q",
                             "--offline", "--reports-dir", str(reports), "--run", "big",
                             "--csv", str(tmp_path / "all.csv")], capture_output=True,
                            text=True, timeout=120, env=script_env(tmp_path), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert len(out.splitlines()) < 120, "no line per task"
    assert "done by 10 workers (40 slots)" in out
    names = [line.split()[0] for line in out.splitlines()
             if line[:1] == "w" and line[1:2].isdigit()]
    assert names == [f"w{n}" for n in range(1, 11)], "natural order, slots folded"
    assert "the 10 slowest tasks:" in out and "failed attempts and dead letters:" in out
    svg = next(reports.glob("q-big.svg"))
    assert svg.stat().st_size < 200_000
    ET.parse(svg)  # well-formed
    csv_rows = (tmp_path / "all.csv").read_text().count("\n") - 1
    assert csv_rows > 19_000 and f"{csv_rows} tasks written" in out, "the CSV keeps every task"
    peaks = {}
    for count, store in ((2_000, write_store(tmp_path, 2_000)), (20_000, reports)):
        measured = subprocess.run([sys.executable, str(ROOT / "bench" / "views.py"), "--one",
                                   str(store / "q.events.jsonl")], capture_output=True,
                                  text=True, timeout=120, check=True, cwd=ROOT)
        peaks[count] = json.loads(measured.stdout)["peak_mb"]
    assert peaks[20_000] - peaks[2_000] < 8, ("memory grows with the run", peaks)


def test_a_small_run_lists_every_attempt_and_big_ones_on_request(tmp_path):
    store = write_store(tmp_path, 60)
    from taskqueue.views.store import EventStore

    events = EventStore(store, "q")
    report = RunReport(events.events(), "big", "q")
    assert "attempts in all: every task with --csv FILE" in report.table()
    listed = report.table(run_attempts(events.events(), "big"))
    rows = [line.split()[0] for line in listed.splitlines() if line.split()[1:2] == ["task"]]
    assert rows[1:] == [str(n) for n in range(1, 61)], "a header, then every attempt"


def test_natural_order_in_the_report():
    events = [{"kind": "task", "id": f"e{n}", "run_id": "r", "worker": name, "started": 1.0,
               "finished": 2.0, "seconds": 1.0, "outcome": "done", "row": n, "task": "x"}
              for n, name in enumerate(["w10/1", "w2/1", "w1/2", "w1/1", "w2/2"], start=1)]
    report = RunReport(events, "r", "q")
    assert [w.worker for w in report.workers] == ["w1", "w2", "w10"]
    assert [s.worker for s in report.slots] == ["w1/1", "w1/2", "w2/1", "w2/2", "w10/1"]
    assert "5 tasks done by 3 workers (5 slots)" in report.table()


def test_time_labels_fall_on_round_values_in_a_fitting_unit():
    assert [label for _, label in ticks(0.2)] == ["0 ms", "50 ms", "100 ms", "150 ms", "200 ms"]
    assert [label for _, label in ticks(0.005)] == [f"{n} ms" for n in range(6)]
    assert [label for _, label in ticks(2.6)] == ["0 s", "0.5 s", "1 s", "1.5 s", "2 s",
                                                  "2.5 s"]
    assert [label for _, label in ticks(1000)] == ["0 min", "5 min", "10 min", "15 min"]
    for span in (0.001, 0.7, 13, 47, 130, 7200, 86400):
        labels = [label for _, label in ticks(span)]
        assert 3 <= len(labels) <= 8 and len(set(labels)) == len(labels), (span, labels)
