"""Cancel one task or a set (issue 31, item 3): ``task_control.py cancel --run RUN`` with
``--row N``, ``--id MESSAGE_ID``, ``--match TEXT`` and ``--dry-run``, against real workers on
the real broker. A running task is stopped with its program's children (checked by pid), a
queued one is acked unrun when it comes, both recorded ``cancelled`` with who cancelled them;
every other task of the run runs on, and the worker with them."""

from __future__ import annotations

import getpass
import socket
import sys
from pathlib import Path

import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control.state import (
    Cancellations,
    ControlState,
    Selection,
    command,
    decode,
)
from taskqueue.results.history import History
from taskqueue.wire.messages import message_id
from taskqueue.wire.record import FINAL
from tests.helpers import (
    MAIN_URL,
    consumers,
    queue_settles_at,
    queue_state,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import all_settled, stop_when
from tests.test_control import control, emit

SENDER = f"{getpass.getuser()}@{socket.gethostname()}"


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan waits for a reaper: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def final_records(queue: str, run: str, tmp_path: Path) -> dict[int, list[dict]]:
    """Row -> the records of the run that end a task (done, dead, cancelled)."""
    history = History(BrokerSettings([MAIN_URL]), QueueSpec(queue), tmp_path / "history")
    rows: dict[int, list[dict]] = {}
    for record in history.run_records(run)():
        if record.get("kind") in (None, "task") and record.get("outcome") in FINAL:
            rows.setdefault(int(record["row"]), []).append(record)
    return rows


def cancel(queue: str, *args: str, logs: Path) -> str:
    return control("cancel", "--queue", queue, *args, logs=logs)


# --- a --command program, its child, rows running and queued, --dry-run -------------------
@pytest.mark.skipif(sys.platform == "win32", reason="pids are read from /proc")
def test_cancel_rows_stops_the_running_one_with_its_child_and_skips_the_queued(queue, logs,
                                                                                tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    program = tmp_path / "work.py"
    program.write_text(
        "import os, subprocess, sys, time\n"
        "text = sys.argv[1]\n"
        "if 'long' in text:\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"    with open(os.path.join({str(pids)!r}, 'tmp'), 'w') as note:\n"
        "        note.write(f'{os.getpid()} {child.pid}')\n"
        f"    os.replace(os.path.join({str(pids)!r}, 'tmp'), "
        f"os.path.join({str(pids)!r}, 'long'))\n"
        "    time.sleep(300)\n"
        "print('did ' + text)\n")
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w", "--command",
                          f"{sys.executable} {program}", log_dir=logs, out=out)  # 1 slot
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    texts = [f"task {n}" + (" long" if n == 3 else "") for n in range(1, 21)]
    run = emit(queue, logs, write_csv(tmp_path / "t.csv", texts))
    wait_for(lambda: (pids / "long").exists(), what="row 3's program and its child")
    program_pid, child_pid = map(int, (pids / "long").read_text().split())
    assert alive(program_pid) and alive(child_pid)

    looked = cancel(queue, "--run", run, "--row", "1", "--row", "3", "--row", "15", "--row",
                    "16", "--dry-run", logs=logs)
    assert "nothing sent" in looked, looked
    assert "row 1, id t.csv:1:" in looked and "over (done already), nothing changes" in looked
    assert "row 3: 'task 3 long': running (on w)" in looked, looked
    assert "row 15: queued (no record yet)" in looked and "row 16: queued" in looked, looked
    assert "1 running (stopped), 2 queued" in looked and "1 over" in looked, looked

    said = cancel(queue, "--run", run, "--row", "15", "--row", "16", logs=logs)
    assert "w (cancel-tasks)" in said and f"by {SENDER}" in said, said
    assert alive(program_pid) and alive(child_pid), \
        "the dry run sent nothing, and a cancel of other rows leaves row 3 running"
    said = cancel(queue, "--run", run, "--row", "3", logs=logs)
    assert "w (cancel-tasks)" in said and "over already" not in said, said
    wait_for(lambda: not alive(program_pid) and not alive(child_pid),
             what="row 3's program and its child to be ended")

    assert stop_when(all_settled([out], 20, queue), queue, [worker], log_dir=logs,
                     what="the run settled") == [0], out.read_text()
    final = final_records(queue, run, tmp_path)
    assert sorted(final) == list(range(1, 21)), final.keys()
    assert all(len(records) == 1 for records in final.values()), \
        {row: len(records) for row, records in final.items() if len(records) > 1}
    outcomes = {row: records[0]["outcome"] for row, records in final.items()}
    assert {row for row, outcome in outcomes.items() if outcome == "cancelled"} == {3, 15, 16}
    assert all(outcome == "done" for row, outcome in outcomes.items() if row not in (3, 15, 16))
    assert final[3][0]["reason"] == f"cancelled by {SENDER}: row 3 of run {run}"
    assert final[15][0]["reason"] == f"cancelled by {SENDER}: rows 15, 16 of run {run}"
    text = out.read_text()
    assert text.count("received row 15") == 0 and text.count("received row 16") == 0, \
        "the queued ones were acked unrun"
    assert "done row 20" in text, "the worker ran on after both cancels"
    queue_settles_at(queue, (0, 0))
    after = cancel(queue, "--run", run, "--row", "20", logs=logs)
    assert "over already, nothing changes for them" in after and "row 20" in after, after


# --- a --handler, by --id (alone) and --match (plain text), and a running one by --match -----
def test_cancel_by_id_and_by_plain_text_match_with_a_handler(queue, logs, tmp_path):
    out, pids = tmp_path / "w.out", tmp_path / "pids"
    worker = start_worker("--queue", queue, "--name", "h", "--handler",
                          "tests.cancel_handlers:spawn_on_hang", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, what="the worker")
    texts = [f"hang {pids}", "b 2", "c 3", "d (a.*b) 4", "e aXXb 5", "f 6"]
    path = write_csv(tmp_path / "h.csv", texts)
    run = emit(queue, logs, path)
    wait_for(pids.exists, what="row 1's handler and the child it started")
    handler_pid, child_pid = map(int, pids.read_text().split())
    third = message_id(str(path.resolve()), 3, "c 3", path.name)

    looked = cancel(queue, "--run", run, "--match", "(a.*b)", "--dry-run", logs=logs)
    assert "nothing sent" in looked and "those containing '(a.*b)' are cancelled when" in looked
    cancel(queue, "--id", third, logs=logs)
    cancel(queue, "--run", run, "--match", "(a.*b)", logs=logs)  # not a pattern: row 4 only
    said = cancel(queue, "--run", run, "--match", "hang", logs=logs)
    assert "h (cancel-tasks)" in said, said
    wait_for(lambda: "cancelled row 1" in out.read_text(), what="the hanging task stopped")
    wait_for(lambda: not alive(handler_pid) and not alive(child_pid),
             what="the handler's process and the child it started to be ended")
    assert stop_when(all_settled([out], 6, queue), queue, [worker], log_dir=logs,
                     what="the run settled") == [0], out.read_text()
    final = final_records(queue, run, tmp_path)
    assert all(len(records) == 1 for records in final.values()) and len(final) == 6, final
    outcomes = {row: records[0]["outcome"] for row, records in final.items()}
    assert outcomes == {1: "cancelled", 2: "done", 3: "cancelled", 4: "cancelled",
                        5: "done", 6: "done"}, outcomes
    assert final[3][0]["reason"] == f"cancelled by {SENDER}: id {third}"
    assert final[1][0]["reason"] == \
        f"cancelled by {SENDER}: tasks containing 'hang' of run {run}"
    queue_settles_at(queue, (0, 0))


# --- a handler's own children end with it (a timeout here; a cancel above) ------------------
@pytest.mark.skipif(sys.platform == "win32", reason="pids are read from /proc")
def test_a_handler_stopped_at_its_timeout_takes_its_children_along(queue, logs, tmp_path):
    pids = tmp_path / "pids"
    emit(queue, logs, write_csv(tmp_path / "t.csv", [f"hang {pids}"]))
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--handler", "tests.cancel_handlers:spawn_on_hang",
                          "--task-timeout", "3", "--max-retries", "0", "--exit-when-idle", "1",
                          log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    handler_pid, child_pid = map(int, pids.read_text().split())
    assert "timed out after 3 s" in out.read_text()
    wait_for(lambda: not alive(handler_pid) and not alive(child_pid),
             what="the handler's process and the child it started to be ended")


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("args, phrase", [
    ((), "give --run ID"),
    (("--row", "3"), "give --run ID"),
    (("--id", "x", "--match", "a"), "give --run ID too"),
    (("--run", "R", "--match", ""), "--match needs some text"),
    (("--run", "R", "--row", "0"), "must be at least 1"),
])
def test_bad_selectors_are_one_line_exit_2_and_nothing_sent(args, phrase, queue, logs):
    result = run_script("task_control.py", "cancel", "--queue", queue, "--url", MAIN_URL,
                        *args, log_dir=logs)
    assert result.returncode == 2 and phrase in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    assert queue_state(QueueSpec(queue).control_name) is None, "nothing was sent"


# --- the pure parts ---------------------------------------------------------------------------
@pytest.mark.fast
def test_a_selection_selects_rows_ids_and_plain_text_within_its_run():
    chosen = Selection("r1", frozenset({3}), frozenset({"f:9:x"}), "(a.*b)")
    assert chosen.selects("r1", "f:3:y", 3, "anything")
    assert chosen.selects("r1", "f:9:x", 9, "anything")
    assert chosen.selects("r1", "f:4:z", 4, "text (a.*b) here")
    assert not chosen.selects("r1", "f:5:z", 5, "aXXb"), "TEXT is data, never a pattern"
    assert not chosen.selects("r2", "f:3:y", 3, "(a.*b)"), "another run"
    any_run = Selection.of(command("cancel-tasks", selection=Selection(ids=frozenset({"f:1:a"}))))
    assert any_run is not None and any_run.before is not None
    assert any_run.selects("20200101T000000Z-ab", "f:1:a", 1, "")
    assert not any_run.selects("29990101T000000Z-ab", "f:1:a", 1, ""), \
        "a later run of the same file reuses the id: untouched"
    assert Selection("r1").fields() == {"run": "r1"} and not Selection("r1").sound
    assert not Selection(rows=frozenset({3})).sound, "rows belong to a run"
    assert decode(b'{"command": "cancel-tasks", "rows": [3]}') is None
    assert decode(b'{"command": "cancel-tasks", "run": "r", "rows": ["3"]}') is None


@pytest.mark.fast
def test_the_state_says_who_cancelled_what():
    state = ControlState("w", 0.0)
    assert state.apply(command("cancel", run="r0", by="ann@a")) == "cancel"
    chosen = Selection("r1", rows=frozenset({3, 15}))
    assert state.apply(command("cancel-tasks", selection=chosen, by="bob@b")) == "cancel-tasks"
    cancelled: Cancellations = state.cancelled_runs
    assert cancelled == {"r0"}, "the runs cancelled whole; the selections beside them"
    assert cancelled.reason_for("r0", None, None, "") == "run r0 was cancelled by ann@a"
    assert cancelled.reason_for("r1", "f:3:x", 3, "") == \
        "cancelled by bob@b: rows 3, 15 of run r1"
    assert cancelled.reason_for("r1", "f:4:x", 4, "") is None


@pytest.mark.fast
def test_who_cancelled_is_kept_short_and_without_control_or_bidi_characters():
    state = ControlState("w", 0.0)
    state.apply(command("cancel", run="r0", by="eve\x1b[2J\u202eevil" + "x" * 500))
    reason = state.cancelled_runs.reason_for("r0", None, None, "")
    assert reason is not None and "\x1b" not in reason and "\u202e" not in reason
    assert reason.startswith("run r0 was cancelled by eve?[2J?evil")
    assert len(reason) <= len("run r0 was cancelled by ") + 100
