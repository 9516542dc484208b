"""A worker holds its next task while its tasks are short, and lets it go when a running one
grows long and no task is ready (worker/look_ahead.py, issue 29 item 5), on the real broker:
one slot, then several (their first subscription stays, the priority -1 one goes)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.helpers import (
    done_rows,
    queue_state,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import stop_when

LET_GO = "waited in hand behind a long task: it goes back to the queue unstarted"


def emit(queue: str, logs: Path, path: Path, rows: list[str]) -> None:
    done = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                      str(write_csv(path, rows)), log_dir=logs)
    assert done.returncode == 0, done.stderr


def after_short_tasks(queue: str, logs: Path, tmp_path: Path, *args: str):
    """One worker (one slot, unless *args* say otherwise), 20 zero-work tasks done: it
    subscribes a second time (two consumers, one worker) and stays so while it waits."""
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w", "--seconds-per-dot", "0.1", *args,
                          log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue) or (0, 0))[1] == 1, what="the worker's subscription")
    emit(queue, logs, tmp_path / "shorts.csv", [f"short {n}" for n in range(1, 21)])
    wait_for(lambda: sum(done_rows(out).values()) == 20 and queue_state(queue) == (0, 2),
             what="20 short tasks done, a second subscription")
    return worker, out


def ran_once(said: str, text: str) -> bool:
    return len([line for line in said.splitlines()
                if "] done row" in line and f"'{text}'" in line]) == 1


def test_a_long_task_with_none_ready_gives_the_held_task_back(queue, logs, tmp_path):
    worker, out = after_short_tasks(queue, logs, tmp_path)
    # A long task (4 s) and one after it: the after one comes to the second subscription
    # (nobody else is there to take it); within a beat or two of the long one's start, none
    # ready, it goes back unstarted, to wait in the queue (another worker could take it), and
    # that subscription is cancelled.
    emit(queue, logs, tmp_path / "mixed.csv", ["long " + "." * 40, "after"])
    wait_for(lambda: queue_state(queue) == (1, 1), timeout=3.5,
             what="the task after the long one back in the queue, one subscription left")
    assert "'after'" not in out.read_text(), "given back unstarted"
    # The long one ends, the after one runs (once), and short tasks bring the second back.
    assert stop_when(lambda: sum(done_rows(out).values()) == 22 and queue_state(queue) == (0, 2),
                     queue, [worker], log_dir=logs, what="all 22 done") == [0]
    said = out.read_text()
    assert ran_once(said, "after") and said.count(LET_GO) == 1, said[-3000:]
    assert "when we stopped taking tasks" not in said, said[-3000:]


def test_while_tasks_are_ready_the_held_task_stays(queue, logs, tmp_path):
    """Tasks ready: no worker is idle (each would be taking one), so holding costs nobody
    anything and nothing is given back."""
    worker, out = after_short_tasks(queue, logs, tmp_path)
    emit(queue, logs, tmp_path / "mixed.csv", ["long " + "." * 30, "next", "last"])
    wait_for(lambda: queue_state(queue) == (1, 2), what="one held, one ready")
    assert stop_when(lambda: sum(done_rows(out).values()) == 23 and queue_state(queue) == (0, 2),
                     queue, [worker], log_dir=logs, what="all 23 done") == [0]
    said = out.read_text()
    assert LET_GO not in said and ran_once(said, "next") and ran_once(said, "last"), said[-3000:]


# --- several slots --------------------------------------------------------------------------
# Tasks "wait NAME" work until the file NAME exists in $LOOK_AHEAD_GATES (``gated_by_name``, the
# workers' --handler): the test says which long task ends when, so what the broker sends where
# follows from the prefetches alone, never from how long a task took. Other tasks end at once.
GATED = ("--handler", "tests.test_look_ahead:gated_by_name")
GATES = "LOOK_AHEAD_GATES"


def gated_by_name(text: str) -> str:
    gate = Path(os.environ[GATES]) / text.split()[-1]
    deadline = time.monotonic() + 120  # (a test that failed half-way must not hang its worker)
    while text.startswith("wait ") and not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"result of {text}"


def gates(tmp_path: Path, monkeypatch) -> Path:
    """The directory of the gates, told to the workers started from now on (their env)."""
    directory = tmp_path / "gates"
    directory.mkdir()
    monkeypatch.setenv(GATES, str(directory))
    return directory


def received(out: Path, text: str) -> bool:
    """A slot of the worker writing *out* started the task *text* (given back ones never do)."""
    return f": '{text}'" in "".join(line for line in out.read_text().splitlines(keepends=True)
                                    if "] received " in line)


def priorities(queue: str) -> list[int]:
    """The consumer priorities of *queue*'s subscriptions, as the broker lists them (no
    x-priority: 0; the second subscription has -1)."""
    for _attempt in range(5):  # (listing every queue's consumers can fail while another
        listing = subprocess.run(  # session's queue goes away under it: exit 70)
            ["rabbitmqctl", "-n", "rabbit@localhost", "-q", "--formatter", "json",
             "list_consumers", "queue_name", "arguments"], capture_output=True, text=True,
            timeout=60)
        if listing.returncode == 0:
            break
        time.sleep(1)
    assert listing.returncode == 0, f"rabbitmqctl list_consumers: {listing.stderr[-1000:]}"
    listed = json.loads(listing.stdout or "[]")
    found = []
    for consumer in listed:
        if consumer["queue_name"] != queue:
            continue
        arguments = consumer["arguments"]  # [[name, type, value]] or {name: value}
        pairs = dict(arguments) if isinstance(arguments, dict) else {
            argument[0]: argument[-1] for argument in arguments}
        found.append(int(pairs.get("x-priority", 0)))
    return sorted(found)


def test_two_slots_let_the_low_subscription_go_with_the_task_it_brought(
        queue, logs, tmp_path, monkeypatch):
    """Two slots after short tasks: two subscriptions. Two long tasks fill the first one
    (prefetch 2: the broker serves priority 0 first), the task after them comes through the
    second; none ready: it goes back unstarted, the low subscription is cancelled, the first
    stays (it counts the two tasks running) and brings the task back once a slot frees."""
    gate = gates(tmp_path, monkeypatch)
    worker, out = after_short_tasks(queue, logs, tmp_path, "--concurrency", "2", *GATED)
    assert priorities(queue) == [-1, 0]
    emit(queue, logs, tmp_path / "mixed.csv", ["wait A", "wait B", "after"])
    wait_for(lambda: queue_state(queue) == (1, 1) and LET_GO in out.read_text(),
             what="the task after the long ones back in the queue, one subscription left")
    assert received(out, "wait A") and received(out, "wait B") and not received(out, "after")
    assert priorities(queue) == [0], "the first subscription stays, the low one goes"
    (gate / "A").touch()  # a slot frees: the first subscription brings the task back, it runs
    wait_for(lambda: ran_once(out.read_text(), "after"), what="the task after the long ones")
    (gate / "B").touch()
    assert stop_when(lambda: sum(done_rows(out).values()) == 23 and queue_state(queue) == (0, 2),
                     queue, [worker], log_dir=logs, what="all 23 done") == [0]
    said = out.read_text()
    assert said.count(LET_GO) == 1 and all(
        ran_once(said, text) for text in ("wait A", "wait B", "after")), said[-3000:]
    assert "when we stopped taking tasks" not in said, said[-3000:]


def test_two_slots_let_the_low_subscription_go_when_the_first_brought_the_task(
        queue, logs, tmp_path, monkeypatch):
    """The task waiting in hand came through the FIRST subscription: A and B fill it, C comes
    through the low one, D waits in the queue (ready: the held C stays). B ends: its slot runs C
    (the low one's), B's ack lets the first bring D, which waits in hand behind A and C. None
    ready: D goes back and the LOW subscription is cancelled (the first counts A; a new one
    would count from zero). The first, one place free, takes D again (no other worker):
    three tasks in hand for two slots, one subscription, until a slot frees. D is short, but
    no low subscription is made again while C, the one let go brought, is in hand: the broker
    counts C against no subscription now, and a new low one would make it slots + 2."""
    gate = gates(tmp_path, monkeypatch)
    worker, out = after_short_tasks(queue, logs, tmp_path, "--concurrency", "2", *GATED)
    emit(queue, logs, tmp_path / "mixed.csv", ["wait A", "wait B", "wait C", "after D"])
    wait_for(lambda: queue_state(queue) == (1, 2) and received(out, "wait A")
             and received(out, "wait B"), what="A and B running, C in hand, D ready")
    (gate / "B").touch()
    wait_for(lambda: LET_GO in out.read_text() and received(out, "wait C"),
             what="C running in B's slot, D given back")
    # (A quorum queue's declare-ok still counts the low subscription while C, which it
    # brought, is unacked: the broker's list of consumers says which are left.)
    wait_for(lambda: priorities(queue) == [0], interval=0.5,
             what="the first subscription left, the low one cancelled")
    wait_for(lambda: queue_state(queue)[0] == 0,  # type: ignore[index]
             what="D back with us (A and C running, D in hand), none ready")
    assert not received(out, "after D"), out.read_text()[-3000:]
    (gate / "A").touch()
    wait_for(lambda: ran_once(out.read_text(), "after D"), what="D, once a slot is free")
    assert priorities(queue) == [0], "no low subscription again while C is in hand"
    (gate / "C").touch()
    assert stop_when(lambda: sum(done_rows(out).values()) == 24 and queue_state(queue) == (0, 1),
                     queue, [worker], log_dir=logs, what="all 24 done") == [0]
    said = out.read_text()
    assert said.count(LET_GO) == 1 and all(
        ran_once(said, text) for text in ("wait A", "wait B", "wait C", "after D")), said[-3000:]
    assert "when we stopped taking tasks" not in said, said[-3000:]


def test_the_task_a_two_slot_worker_lets_go_is_run_by_the_idle_worker(
        queue, logs, tmp_path, monkeypatch):
    """The fairness the low subscription promises. A two-slot worker after short tasks, then a
    one-slot one: three long tasks fill the three places of priority 0 (whichever way the broker
    spreads them), C comes to the low subscription, D waits ready (so C stays in hand). The
    second worker's task ends: it takes D, runs it and is idle; nothing ready: C goes back
    unstarted and the idle worker runs it, while the first worker's slots are still busy."""
    gate = gates(tmp_path, monkeypatch)
    first, out = after_short_tasks(queue, logs, tmp_path, "--concurrency", "2", *GATED)
    out2 = tmp_path / "w2.out"
    second = start_worker("--queue", queue, "--name", "w2", *GATED, log_dir=logs, out=out2)
    wait_for(lambda: queue_state(queue) == (0, 3), what="the second worker's subscription")
    longs = ["wait 1", "wait 2", "wait 3"]
    emit(queue, logs, tmp_path / "mixed.csv", [*longs, "after C", "then D"])
    wait_for(lambda: queue_state(queue) == (1, 3) and sum(
        received(out, text) for text in longs) == 2 and sum(
        received(out2, text) for text in longs) == 1, what="3 long ones running, C held, D ready")
    assert LET_GO not in out.read_text(), "a task ready: the held one stays"
    [theirs] = [text for text in longs if received(out2, text)]
    (gate / theirs.split()[-1]).touch()
    wait_for(lambda: ran_once(out2.read_text(), "after C"), what="C run by the idle worker")
    wait_for(lambda: LET_GO in out.read_text(), what="the first worker's line for C")
    said = out.read_text()
    assert said.count(LET_GO) == 1 and not received(out, "after C"), said[-3000:]
    assert ran_once(out2.read_text(), "then D")
    for text in longs:
        (gate / text.split()[-1]).touch()
    assert stop_when(lambda: sum(done_rows(out, out2).values()) == 25 and queue_state(queue)[0]
                     == 0, queue, [first, second], log_dir=logs, what="all 25 done") == [0, 0]
    said, said2 = out.read_text(), out2.read_text()
    assert all(ran_once(said + said2, text) for text in [*longs, "after C", "then D"]), (
        said[-3000:] + said2[-3000:])
    assert "when we stopped taking tasks" not in said + said2
