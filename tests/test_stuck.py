"""Nothing stuck, whatever the mix (issue 16): a worker with any task and any fault either works
or exits with one clear line, and no process it started outlives it. Against the real broker,
except the pure pieces (a slot's guard, the outbox's matching of returns)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from taskqueue.errors import UserError
from taskqueue.worker.command import split_command
from taskqueue.worker.delivery import Delivery
from taskqueue.worker.slots import WorkSlot
from taskqueue.worker.work import Outcome, Runner
from tests.helpers import (
    MAIN_URL,
    consume_all,
    consumers,
    queue_state,
    start_worker,
    wait_for,
)
from tests.stopping import emptied, stop_when


def dead_lettered_and_drained(queue: str):
    """A condition: one task in <queue>.dead (nobody consumes it), none waiting in the queue
    or on its way back from <queue>.retry (a task waiting out its retry delay leaves the queue
    empty meanwhile)."""
    return lambda: (queue_state(queue + ".dead") == (1, 0) and emptied(queue)
                    and emptied(queue + ".retry"))


def publish_to(queue: str, *bodies: bytes) -> None:
    """Publish to an existing queue without declaring anything (the worker made it)."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2),
                                  mandatory=True)
    finally:
        connection.close()


def delete(*names: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        for name in names:
            connection.channel().queue_delete(name)
    finally:
        connection.close()


# --- 1. a runner that raises ---------------------------------------------------------------
class Exploding(Runner):
    def run(self, text: str) -> Outcome:
        raise RuntimeError(f"bug while running {text!r}")


def test_a_runner_that_raises_is_a_failed_attempt_and_the_slot_goes_on():
    outcomes: list[Outcome] = []
    arrived = threading.Event()

    def on_outcome(_slot, _delivery, outcome):
        outcomes.append(outcome)
        arrived.set()

    slot = WorkSlot("w", Exploding(), on_outcome, lambda callback: callback())
    for text in ("first", "second"):
        arrived.clear()
        slot.assign(Delivery(None, 1, pika.BasicProperties(), text.encode(), False, text=text))
        assert arrived.wait(5), "the slot thread died without an outcome"
    slot.close()
    assert [outcome.ok for outcome in outcomes] == [False, False]
    assert "RuntimeError: bug while running 'second'" in outcomes[1].reason


def test_a_task_text_the_os_refuses_as_an_argument_is_dead_lettered(queue, logs, tmp_path):
    """A NUL byte cannot be part of a program's argument: Popen raises ValueError."""
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w1", "--command", "echo {}",
                          "--max-retries", "1", "--retry-delay", "0.2", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="the worker")  # it made the queue
    publish_to(queue, b"bad\x00text", b"good text")
    assert stop_when(dead_lettered_and_drained(queue), queue, [worker], log_dir=logs,
                     what="the bad task dead, the good one done") == [0], out.read_text()
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"bad\x00text"]
    assert "NUL byte" in dead[0][0].headers["x-death-reason"]
    assert "done no row" in out.read_text(), "the next task was done by the same slot"
    assert queue_state(queue) == (0, 0)


# --- 4. processes die with the worker --------------------------------------------------------
def descendants(pid: int) -> set[int]:
    """Every process below *pid* (by /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


@pytest.mark.parametrize("work", [
    ("--handler", "tests.handlers:sleep_forever"),
    ("--command", "sh -c 'sleep 300; echo never'"),
])
def test_processes_a_killed_worker_started_die_with_it(work, queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w1", *work, "--concurrency", "2",
                          log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    publish_to(queue, b"hang 1", b"hang 2")
    wait_for(lambda: out.read_text().count("received") == 2, what="both tasks in hand")
    time.sleep(0.5)  # the programs are started after 'received'
    ours = descendants(worker.pid)
    assert len(ours) >= 2, ours
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    try:
        wait_for(lambda: not any(alive(pid) for pid in ours), timeout=10,
                 what="every process the worker started to end")
    finally:
        for pid in ours:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- 5. a deleted companion queue ------------------------------------------------------------
def test_a_deleted_retry_and_dead_queue_are_made_again_not_a_hot_loop(queue, logs, tmp_path):
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w1", "--seconds-per-dot", "1",
                          "--task-timeout", "0.2", "--max-retries", "2", "--retry-delay", "0.3",
                          log_dir=logs, out=out)  # no idle exit: it runs before the publish
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    delete(queue + ".retry", queue + ".dead")
    publish_to(queue, b"slow....")
    assert stop_when(dead_lettered_and_drained(queue), queue, [worker], log_dir=logs,
                     what="the task dead-lettered") == [0], out.read_text()
    text = out.read_text()
    assert "3 failed attempts, 1 dead-lettered" in text, text
    assert "declaring the queues again" in text
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"slow...."]
    assert "failed 3 times" in dead[0][0].headers["x-death-reason"]
    assert queue_state(queue) == (0, 0) and queue_state(queue + ".retry") == (0, 0)


# --- 6. batch files on Windows ---------------------------------------------------------------
def test_batch_files_are_refused_on_windows(tmp_path, monkeypatch):
    for name in ("npx.cmd", "build.BAT", "tool.exe"):
        program = tmp_path / name
        program.write_text("@echo off\n")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    for name in ("npx.cmd", "build.BAT"):
        with pytest.raises(UserError, match="batch file"):
            split_command(f'{name} "{{}}"', windows=True)
        assert split_command(f"{name} {{}}", windows=False)[0] == name, "only Windows uses cmd"
    assert split_command("tool.exe {}", windows=True) == ["tool.exe", "{}"]


# --- 7. returned copies matched exactly --------------------------------------------------------
def test_a_returned_copy_is_told_apart_from_another_with_the_same_key_and_no_id():
    """Tutorial messages have no message_id: two copies to one queue look the same but for
    the copy id the outbox gives each; a multiple ack settles both, only one was returned."""
    import logging

    from pika.spec import Basic

    from taskqueue.broker.config import BrokerSettings, QueueSpec
    from taskqueue.worker.copies import Copy
    from taskqueue.worker.outbox import COPY_ID, Outbox

    outbox = Outbox(BrokerSettings(urls=[MAIN_URL]), QueueSpec("q"), logging.getLogger("t"),
                    None, "w")
    settled: dict[str, list[bool]] = {"a": [], "b": []}
    copies = {}
    for tag, name in enumerate("ab", start=1):
        copy = Copy("q.dead", b"same body", pika.BasicProperties(headers={COPY_ID: f"w:{tag}"}),
                    settled[name].append)
        copies[name] = copy
        outbox._unconfirmed[tag] = copy
    returned = pika.BasicProperties(headers={COPY_ID: "w:2"})
    outbox._on_return(None, Basic.Return(312, "NO_ROUTE", "", "q.dead"), returned, b"same body")
    outbox._on_confirm(pika.frame.Method(1, Basic.Ack(delivery_tag=2, multiple=True)))
    assert settled["a"] == [True], "the copy that was routed is confirmed"
    assert settled["b"] == [], "the returned one is not: it is sent again once the queue is back"
    assert copies["b"].returns == 1 and outbox.copies_waiting == 1


def test_programs_we_start_do_not_inherit_the_reapers_pipe():
    """The reaper's pipe must not leak into programs we start (they would keep it open and
    the reaper would never see the worker end)."""
    code = ("from taskqueue.worker.reaper import REAPER; import subprocess, sys, os; "
            "REAPER.watch(os.getpid()); REAPER.forget(os.getpid()); "
            "print(' '.join(subprocess.run(['ls', '/proc/self/fd'], capture_output=True, "
            "text=True).stdout.split())); REAPER.close()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=30)
    assert result.returncode == 0, result.stderr
    fds = sorted(int(fd) for fd in result.stdout.split())
    assert fds == [0, 1, 2, 3], fds  # 3: ls's own handle on the directory it lists
