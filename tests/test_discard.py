"""task_control.py discard-dead's logic (control/discard.py) against the real broker: chosen
dead tasks deleted from ``<queue>.dead`` (a passive declare counts them), the others left
there, a dry run deleting nothing, and each deletion recorded in the results stream with who
did it."""

from __future__ import annotations

import argparse
import logging

import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.control import discard
from taskqueue.errors import UserError
from taskqueue.results.reader import RecordReader
from tests.helpers import MAIN_URL, queue_state, run_script, start_worker, wait_for, write_csv


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    discard.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["discard-dead", *argv])


def discards(queue: str) -> list[dict]:
    reader = RecordReader(BrokerSettings([MAIN_URL]), QueueSpec(queue), idle=1.0)
    return [r for r in reader.records() if r.get("kind") == "discard"]


def test_discard_dead_deletes_the_chosen_dead_tasks_only_and_records_who(
        queue, logs, tmp_path, capsys):
    worker = start_worker("--queue", queue, "--handler", "tests.task_page_handlers:flaky_or_doomed",
                          "--in-process", "--max-retries", "0", log_dir=logs,
                          out=tmp_path / "w.out")
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                         str(write_csv(tmp_path / "t.csv", [f"doomed {n}" for n in range(3)]
                                       + ["fine"])), log_dir=logs)
    assert emitted.returncode == 0, emitted.stderr
    spec, settings = QueueSpec(queue), BrokerSettings([MAIN_URL])
    wait_for(lambda: (queue_state(spec.dead_name) or (0, 0))[0] == 3, timeout=60,
             what="three dead tasks")
    worker.terminate()
    worker.wait(timeout=30)
    log = logging.getLogger("test")

    with pytest.raises(UserError, match="give --reason, --run or --id"):
        discard.command(parse(), settings, spec, log)  # nothing chosen: nothing deleted

    ids = [r.get("message_id") for r in RecordReader(settings, spec, idle=1.0).records()
           if r.get("outcome") == "dead"]
    assert len(ids) == 3
    assert discard.command(parse("--id", ids[0], "--dry-run"), settings, spec, log) == 0
    assert "1 of the 3 dead tasks" in capsys.readouterr().out
    assert queue_state(spec.dead_name)[0] == 3, "a dry run deletes nothing"

    # The same through task_control.py, as a user types it.
    said = run_script("task_control.py", "discard-dead", "--queue", queue, "--id", ids[0],
                      log_dir=logs)
    assert said.returncode == 0 and said.stderr == "", said.stderr
    assert "discard-dead: 1 of the 3 dead tasks" in said.stdout and "recorded" in said.stdout
    assert queue_state(spec.dead_name)[0] == 2, "the chosen one is gone, the others stay"

    done = discard.discard_dead(settings, spec, log,
                                discard.DiscardFilter(reason="cannot handle"), "alice@ops")
    assert (done.deleted, done.kept, done.complete) == (2, 0, True)
    assert queue_state(spec.dead_name)[0] == 0

    wrote = discards(queue)
    assert sorted(r["message_id"] for r in wrote) == sorted(ids)
    first = next(r for r in wrote if r["message_id"] == ids[0])
    assert first["by"] == discard.who_am_i() and "cannot handle" in first["reason"]
    assert {r["by"] for r in wrote if r["message_id"] != ids[0]} == {"alice@ops"}


def test_discard_dead_of_a_queue_that_has_no_dead_queue_says_so_in_one_line(queue):
    with pytest.raises(UserError, match=r"there is no queue '.*\.dead': nothing to discard"):
        discard.discard_dead(BrokerSettings([MAIN_URL]), QueueSpec(queue),
                             logging.getLogger("test"), discard.DiscardFilter(reason="x"), "me")
