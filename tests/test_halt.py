"""Fail fast (issue 31, item 5): ``emitter_of_tasks.py --wait --halt-after N`` (or ``N%``) and
``Run.wait(halt_after=...)``. Once the run has that many dead tasks, the rest of it is
cancelled, the waiting ends with exit 6 and the summary says why. Against the real broker, with
real workers: every task of the run is then accounted for in the record (done, dead or
cancelled), nothing of it is left in the queues, and the workers go on with the next run."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest

from tests.helpers import (
    MAIN_URL,
    consumers,
    queue_state,
    recorded,
    run_python,
    run_script,
    start_worker,
    unacked,
    wait_for,
    write_csv,
)
from tests.stopping import stop_workers

HANDLER = "tests.halt_handlers:boom_or_hold"  # boom fails, hold works for 2 minutes
RUN_ID = re.compile(r"\(run (\S+)\)")


def start_workers(queue: str, logs, tmp_path, count: int) -> list[subprocess.Popen]:
    """*count* workers of two slots each, failing tasks dead at once (no retries)."""
    workers = [start_worker("--queue", queue, "--name", f"w{n}", "--concurrency", "2",
                            "--handler", HANDLER, "--max-retries", "0", log_dir=logs,
                            out=tmp_path / f"w{n}.out") for n in range(1, count + 1)]
    wait_for(lambda: consumers(queue) == count, what="the workers")
    return workers


def nothing_of_the_run_is_left(queue: str, dead: int) -> None:
    """No task waits in the queue or its .retry, none is in a worker's hand, and .dead holds
    exactly the dead ones (a record comes before its ack: the acks may be a moment behind)."""
    assert queue_state(queue)[0] == 0
    wait_for(lambda: unacked(queue) == 0, timeout=30, what="every task acked")
    assert (queue_state(f"{queue}.retry") or (0, 0))[0] == 0
    wait_for(lambda: queue_state(f"{queue}.dead")[0] == dead, timeout=30,
             what=f"{dead} tasks in .dead")


def test_two_dead_halt_a_run_of_thirty_the_rest_is_cancelled_and_workers_go_on(
        queue, logs, tmp_path):
    workers = start_workers(queue, logs, tmp_path, 2)
    rows = ["boom 1", "boom 2", "boom 3"] + [f"hold {n}" for n in range(4, 31)]
    path = write_csv(tmp_path / "t.csv", rows)
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--wait",
                        "--halt-after", "2", "--results", str(tmp_path / "r.csv"),
                        log_dir=logs, timeout=100)
    text = result.stdout + result.stderr
    assert result.returncode == 6, text
    run = RUN_ID.search(text)[1]
    assert re.search(rf"halted: run {run} had [23] dead tasks \(--halt-after 2\): the rest of "
                     r"it was cancelled; 30 of 30 tasks have an outcome \(0 done, [23] dead, "
                     r"2[78] cancelled\)", text), text
    assert "Traceback" not in text

    # Every task is accounted for in the record: the boom ones dead (or cancelled, for one
    # that came after the cancel), every hold one cancelled (none ran its two minutes).
    table = recorded(queue, run=run)
    assert sorted(table) == list(range(1, 31))
    outcomes = Counter(row["outcome"] for row in table.values())
    assert outcomes["dead"] >= 2 and outcomes["dead"] + outcomes["cancelled"] == 30, outcomes
    assert {table[n]["outcome"] for n in range(4, 31)} == {"cancelled"}
    assert (tmp_path / "r.csv").read_text().count("\n") == 31  # header and one row per task
    nothing_of_the_run_is_left(queue, outcomes["dead"])

    # The workers are alive, idle and take the next run.
    assert [worker.poll() for worker in workers] == [None, None]
    after = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "next 1",
                       "--message", "next 2", "--message", "next 3", "--wait",
                       "--halt-after", "1", log_dir=logs, timeout=60)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "all outcomes in: 3 of 3 tasks have an outcome (3 done" in after.stdout
    assert stop_workers(queue, workers, log_dir=logs) == [0, 0]


def test_a_run_under_the_limit_finishes_as_without_it(queue, logs, tmp_path):
    workers = start_workers(queue, logs, tmp_path, 1)
    rows = [f"{'boom' if n in (2, 7) else 'ok'} {n}" for n in range(1, 11)]
    path = write_csv(tmp_path / "t.csv", rows)
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--wait",
                        "--halt-after", "30%", log_dir=logs, timeout=60)  # 3 of 10
    text = result.stdout + result.stderr
    assert result.returncode == 6, text  # some dead, as without --halt-after
    assert "all outcomes in: 10 of 10 tasks have an outcome (8 done, 2 dead, 0 cancelled)" in text
    assert "halt" not in text.replace("--halt-after", "")
    outcomes = Counter(row["outcome"] for row in recorded(queue).values())
    assert outcomes == {"done": 8, "dead": 2}
    nothing_of_the_run_is_left(queue, 2)
    assert stop_workers(queue, workers, log_dir=logs) == [0]


@pytest.mark.parametrize(("args", "words"), [
    (["--wait", "--halt-after", "0"], "'0' must be a whole number of dead tasks of 1 or more"),
    (["--wait", "--halt-after", "-3"], "'-3' must be a whole number of dead tasks of 1 or more"),
    (["--wait", "--halt-after", "abc"], "'abc' must be a whole number of dead tasks"),
    (["--wait", "--halt-after", "2.5"], "'2.5' must be a whole number of dead tasks"),
    (["--wait", "--halt-after", "150%"], "'150%' must be a percentage above 0 and at most 100"),
    (["--wait", "--halt-after", "0%"], "'0%' must be a percentage above 0 and at most 100"),
    (["--halt-after", "2"], "--halt-after needs --wait"),
])
def test_a_bad_limit_is_one_line_and_nothing_is_published(args, words, queue, logs):
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "x", *args,
                        log_dir=logs)
    assert result.returncode == 2, result.stdout + result.stderr
    assert words in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert queue_state(queue) is None, "nothing was declared, nothing published"


def test_the_python_api_halts_too(queue, logs, tmp_path):
    workers = start_workers(queue, logs, tmp_path, 1)
    code = (f"import taskqueue\n"
            f"texts = ['boom 1', 'boom 2'] + ['hold %d' % n for n in range(3, 11)]\n"
            f"run = taskqueue.submit(texts, queue={queue!r}, url={MAIN_URL!r})\n"
            f"print(run.wait(timeout=90, halt_after='10%'))\n"
            f"o = run.outcomes\n"
            f"print(o.done, o.dead + o.cancelled, o.dead >= 1, o.halted)\n")
    result = run_python(code, log_dir=logs, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True", result.stdout  # every task has its outcome
    assert lines[1].startswith("0 10 True run "), result.stdout  # why: the halt's reason
    assert "(halt_after='10%': 1 of 10)" in lines[1]
    assert stop_workers(queue, workers, log_dir=logs) == [0]


@pytest.mark.fast
@pytest.mark.parametrize(("text", "total", "at"), [
    ("2", 30, 2), ("50", 30, 50), ("10%", 30, 3), ("10%", 25, 3), ("1%", 10, 1),
    ("100%", 7, 7), ("2.5%", 100, 3), ("0.1%", 1000, 1), ("33%", 3, 1),
])
def test_the_limit_in_dead_tasks_of_a_run(text, total, at):
    from taskqueue.emitter.halt import HaltAfter  # here: the file loads on older code too

    assert HaltAfter.parse(text).threshold(total) == at


@pytest.mark.fast
@pytest.mark.parametrize("value", ["0", "-3", "abc", "", "2.5", "150%", "0%", "%", "x%",
                                   "nan%", "inf%", 0, -1, True, 2.0])
def test_bad_limits_are_refused(value):
    from taskqueue.emitter.halt import HaltAfter

    with pytest.raises(ValueError, match="must be"):
        HaltAfter.of(value)


@pytest.mark.fast
def test_the_halt_cancels_once_when_the_dead_reach_the_limit():
    from taskqueue.emitter.halt import Halt, HaltAfter
    from taskqueue.results.waiting import Outcomes

    cancels, said = [], []
    halt = Halt(HaltAfter.of(2), "run-a", 30, cancel=lambda: cancels.append(1) or "answered",
                say=said.append)
    outcomes = Outcomes(expected=30, done=5, dead=1, cancelled=0)
    halt(outcomes)
    assert not cancels and not outcomes.halted
    outcomes.dead = 2
    halt(outcomes)
    halt(outcomes)
    assert cancels == [1]
    assert outcomes.halted == "run run-a had 2 dead tasks (--halt-after 2)"
    assert said == ["halting: run run-a had 2 dead tasks (--halt-after 2): cancelling the rest "
                    "of it", "answered"]


@pytest.mark.fast
def test_a_cancel_that_cannot_be_given_says_it_was_for_the_halt(monkeypatch):
    import logging

    from taskqueue.broker.config import BrokerSettings, QueueSpec
    from taskqueue.control import commands
    from taskqueue.emitter.halt import run_canceller
    from taskqueue.errors import EXIT_REFUSED, UserError

    def refused(*_args: object, **_kwargs: object) -> None:
        raise UserError("RabbitMQ refused an operation (ACCESS_REFUSED)", EXIT_REFUSED)

    monkeypatch.setattr(commands, "send", refused)
    cancel = run_canceller(BrokerSettings(["amqp://h"]), QueueSpec("q"), "run-a",
                           logging.getLogger("test"))
    with pytest.raises(UserError) as raised:
        cancel()
    assert str(raised.value) == ("could not cancel the rest of run run-a to halt it: RabbitMQ "
                                 "refused an operation (ACCESS_REFUSED)")
    assert raised.value.exit_code == EXIT_REFUSED
