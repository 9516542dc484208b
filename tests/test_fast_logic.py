"""Pure logic that had no test of its own: option types, broker URLs, the timeline's busy
bins, --skip-done, waiting for outcomes, work slots, the log handler, the latest run."""

from __future__ import annotations

import argparse
import io
import logging
import os
import time
from types import SimpleNamespace

import pytest

from taskqueue.broker.config import (
    BrokerSettings,
    QueueSpec,
    mask_url,
    url_user,
    validate_url,
    with_credentials,
)
from taskqueue.cli import OneLineParser, positive_float, positive_int, seconds_above_zero
from taskqueue.emitter.done_rows import SkipDone, done_ids
from taskqueue.errors import EXIT_BAD_INPUT, UserError
from taskqueue.log import ConsoleAndFileHandler
from taskqueue.results.waiting import Outcomes, OutcomeWaiter
from taskqueue.views.store import latest_run
from taskqueue.views.timeline import MAX_BINS, MAX_LANES, BusyBins, svg
from taskqueue.worker.slots import run_guarded, slot_names
from taskqueue.worker.work import Outcome, Runner

# --- option types (cli.py) ---------------------------------------------------------------


def test_number_options_take_their_kind_and_refuse_below_their_minimum():
    assert positive_float("0") == 0.0 and positive_float("2.5") == 2.5
    assert positive_int("3") == 3 and isinstance(positive_int("3"), int)
    assert seconds_above_zero("0.1") == 0.1
    for parse, text, words in [(positive_float, "-1", "must be at least 0"),
                               (positive_float, "soon", "is not a number"),
                               (positive_int, "0", "must be at least 1"),
                               (positive_int, "1.5", "is not a whole number"),
                               (seconds_above_zero, "0", "must be more than 0"),
                               (seconds_above_zero, "x", "is not a number of seconds")]:
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(text)


def test_a_usage_error_is_one_line_and_exit_code_2(capsys):
    parser = OneLineParser(prog="worker")
    parser.add_argument("--concurrency", type=positive_int)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--concurrency", "0"])
    assert exited.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("worker: error: argument --concurrency")
    assert err.endswith("(see --help)\n")


# --- broker URLs (broker/config.py) -------------------------------------------------------


@pytest.mark.parametrize(("url", "words"), [
    ("http://u:secret@h/", "must start with amqp:// or amqps://"),
    ("amqp://u:secret@:5672/", "has no host"),
    ("amqp://u:secret@h:0/", "has port 0, outside 1-65535"),
    ("amqp://u:secret@h:port/", "cannot parse broker URL"),
])
def test_a_bad_url_says_what_is_wrong_and_never_the_password(url, words):
    with pytest.raises(UserError, match=words) as refused:
        validate_url(url)
    assert "secret" not in str(refused.value) and refused.value.exit_code == EXIT_BAD_INPUT


def test_good_urls_pass():
    for url in ("amqp://h", "amqps://u:p@h:5671/%2F", "amqp://[::1]:5672/v"):
        validate_url(url)


def test_masking_keeps_an_ipv6_host_and_the_user():
    assert mask_url("amqp://bob:pw@[::1]:5672/v") == "amqp://bob:***@[::1]:5672/v"
    assert mask_url("amqps://:pw@h/") == "amqps://:***@h/"


def test_the_user_of_a_url_is_unquoted_and_guest_by_default():
    assert url_user("amqp://bob%40corp:pw@h/") == "bob@corp"
    assert url_user("amqp://h/") == "guest"


def test_credentials_replace_the_urls_own_and_a_missing_file_is_a_user_error(tmp_path):
    assert with_credentials("amqp://h/", None) == "amqp://h/"
    creds = tmp_path / "creds"
    creds.write_text("carol:pw\nignored:line\n", encoding="utf-8")
    assert with_credentials("amqp://old:old@h:5672/v", str(creds)) == "amqp://carol:pw@h:5672/v"
    with pytest.raises(UserError, match="cannot read credentials file") as refused:
        with_credentials("amqp://h/", str(tmp_path / "absent"))
    assert refused.value.exit_code == EXIT_BAD_INPUT


def test_a_classic_retry_queue_only_dead_letters_back_to_the_task_queue():
    spec = QueueSpec("jobs", "classic")
    assert spec.create_type() == "classic"
    assert spec.companion_arguments("jobs.retry", "classic", (4, 0)) == {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "jobs"}
    assert spec.streams == ["jobs.results", "jobs.control"] and spec.exchange == "jobs.events"


# --- the timeline's busy bins (views/timeline.py) -----------------------------------------


def busy(bins: BusyBins, lane: str) -> float:
    return sum(bins.lanes[lane])


def test_busy_seconds_are_kept_when_the_bins_grow_coarser():
    bins = BusyBins()
    bins.add("w1", 100.0, 101.0)
    width = bins.width
    bins.add("w1", 200.0, 300.0)  # far beyond MAX_BINS x the first width: coarsened
    assert bins.width > width and bins.origin == 100.0
    assert busy(bins, "w1") == pytest.approx(101.0)
    assert bins.origin + bins.width * MAX_BINS >= 200.0


def test_an_attempt_before_the_origin_moves_it_back_and_keeps_every_second():
    bins = BusyBins()
    bins.add("w1", 100.0, 102.0)
    bins.add("w2", 50.0, 53.0)
    assert bins.origin is not None and bins.origin <= 50.0
    assert busy(bins, "w1") == pytest.approx(2.0) and busy(bins, "w2") == pytest.approx(3.0)
    first_busy = next(i for i, value in enumerate(bins.lanes["w2"]) if value)
    assert bins.origin + first_busy * bins.width <= 50.0 < bins.origin + (first_busy + 1) * \
        bins.width


def test_a_small_run_draws_one_bar_per_attempt_and_a_big_one_names_the_lanes_left_out():
    bars = [{"worker": "w/1", "started": 0.0, "finished": 1.0, "row": 1, "outcome": "done"},
            {"worker": "w/2", "started": 0.5, "finished": 2.0, "row": 2, "outcome": "dead"},
            {"worker": "gone", "started": 0.0, "finished": 1.0, "row": 3}]  # no lane: not drawn
    picture = svg("run", 0.0, 2.0, [("w/1", "w/1", 1), ("w/2", "w/2", 0)], bars, None, {})
    assert picture.count('<g class="task">') == 2 and "#e15759" in picture  # dead's colour
    lanes = [(f"w{n}", f"w{n}", 0) for n in range(MAX_LANES + 3)]
    bins = BusyBins()
    bins.add("w0", 0.0, 5.0)
    big = svg("run", 0.0, 10.0, lanes, None, bins, {"w0": 1})
    assert big.count('class="lane"') == MAX_LANES and "... and 3 more workers" in big
    assert big.count('class="busy"') == 1


# --- --skip-done (emitter/done_rows.py) ----------------------------------------------------


def test_skip_done_drops_only_rows_of_this_file_done_in_any_run():
    records = [
        {"message_id": "tasks.csv:1:aaaaaaaaaaaa", "outcome": "done", "run_id": "r1"},
        {"message_id": "tasks.csv:2:bbbbbbbbbbbb", "outcome": "dead", "run_id": "r1"},
        {"message_id": "tasks.csv:3:cccccccccccc", "outcome": "done", "run_id": "r2"},
        {"message_id": "other.csv:4:dddddddddddd", "outcome": "done"},
        {"message_id": "tasks.csv:5:eeeeeeeeeeee", "outcome": "done", "kind": "mark"},
    ]
    skip = SkipDone(done_ids(records, "tasks.csv"))
    tasks = [SimpleNamespace(message_id=f"tasks.csv:{row}:{letter * 12}")
             for row, letter in [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]]
    kept = [task.message_id.split(":")[1] for task in skip(tasks)]
    assert kept == ["2", "4", "5"] and skip.skipped == 2


# --- waiting for outcomes (results/waiting.py) ---------------------------------------------


def test_outcomes_count_each_awaited_row_of_the_run_once():
    rows = bytearray([0, 1, 1, 1])  # rows 1-3 were published
    waiter = OutcomeWaiter(BrokerSettings(["amqp://h"]), QueueSpec("q"), "run-a", rows, 3)
    for record in [{"run_id": "run-a", "row": 1, "outcome": "done"},
                   {"run_id": "run-a", "row": 1, "outcome": "done"},  # ran twice: once
                   {"run_id": "run-a", "row": 2, "outcome": "failed"},  # not final
                   {"run_id": "run-b", "row": 2, "outcome": "done"},  # another run
                   {"run_id": "run-a", "row": 0, "outcome": "done"},  # not awaited
                   {"run_id": "run-a", "row": 9, "outcome": "done"},  # beyond the file
                   {"run_id": "run-a", "row": 3, "outcome": "dead"},
                   {"run_id": "run-a", "row": 2, "outcome": "done", "kind": "mark"}]:
        waiter._count(record)
    outcomes = waiter.outcomes
    assert (outcomes.done, outcomes.dead, outcomes.cancelled) == (1, 1, 0)
    assert outcomes.finished == 2 and not outcomes.complete
    waiter._count({"run_id": "run-a", "row": 2, "outcome": "cancelled"})
    assert outcomes.complete
    assert outcomes.line().startswith("3 of 3 tasks have an outcome (1 done, 1 dead, 1 cancelled)")


def test_nothing_to_wait_for_returns_at_once_without_reading():
    waiter = OutcomeWaiter(BrokerSettings(["amqp://h"]), QueueSpec("q"), "r", bytearray(1), 0)
    assert waiter.wait(timeout=0).complete and not waiter.outcomes.stopped
    assert Outcomes(expected=2, done=1, dead=1).complete


# --- work slots (worker/slots.py) ----------------------------------------------------------


def test_slots_are_named_after_the_worker():
    assert slot_names("alice", 1) == ["alice"]
    assert slot_names("alice", 3) == ["alice/1", "alice/2", "alice/3"]


def test_a_runner_that_raises_gives_a_failed_outcome_not_an_exception():
    class Broken(Runner):
        def run(self, text: str) -> Outcome:
            raise ValueError(f"cannot do {text}")

    class Fine(Runner):
        def run(self, text: str) -> Outcome:
            return Outcome(True, text.upper())

    outcome = run_guarded(Broken(), "x")
    assert not outcome.ok
    assert outcome.reason == "the worker could not run the task: ValueError: cannot do x"
    assert run_guarded(Fine(), "x") == Outcome(True, "X")


# --- the log handler (log.py) ---------------------------------------------------------------


def test_a_line_goes_to_the_console_short_and_to_the_file_with_date_and_pid():
    console, log_file = io.StringIO(), io.StringIO()
    handler = ConsoleAndFileHandler(console, log_file)
    created = 1_764_583_200.25
    handler.write(logging.WARNING, "worker", "queue 'q' is gone", created)
    clock = time.strftime("%H:%M:%S", time.localtime(created))
    day = time.strftime("%Y-%m-%d", time.localtime(created))
    assert console.getvalue() == f"{clock} WARNING queue 'q' is gone\n"
    assert log_file.getvalue() == (f"{day} {clock}.250 WARNING [worker pid={os.getpid()}] "
                                   "queue 'q' is gone\n")


def test_a_console_that_cannot_show_a_character_gets_an_escape_and_the_file_the_text():
    raw = io.BytesIO()
    console = io.TextIOWrapper(raw, encoding="ascii")
    log_file = io.StringIO()
    handler = ConsoleAndFileHandler(console, log_file)
    handler.write(logging.INFO, "worker", "task 'Zoë' done", time.time())
    handler.flush()
    assert raw.getvalue().endswith(b"INFO    task 'Zo\\xeb' done\n")
    assert log_file.getvalue().endswith("task 'Zoë' done\n")


def test_a_record_with_an_exception_carries_its_traceback():
    console = io.StringIO()
    logger = logging.getLogger("test_fast_logic")
    logger.propagate = False
    handler = ConsoleAndFileHandler(console, None)
    logger.addHandler(handler)
    try:
        try:
            raise KeyError("row")
        except KeyError:
            logger.exception("the task failed")
    finally:
        logger.removeHandler(handler)
    text = console.getvalue()
    assert "ERROR   the task failed\nTraceback" in text and "KeyError: 'row'" in text


# --- the latest run (views/store.py) --------------------------------------------------------


def test_the_latest_run_is_the_one_whose_last_task_finished_last():
    events = [{"run_id": "r1", "finished": 10.0}, {"run_id": "r2", "finished": 30.0},
              {"run_id": "r1", "finished": 20.0}, {"kind": "snapshot", "run_id": "r3",
                                                    "finished": 99.0}]
    assert latest_run(events) == "r2"
    assert latest_run([*events, {"run_id": "r1", "finished": 31.0}]) == "r1"
    assert latest_run([{"kind": "snapshot"}]) is None and latest_run([]) is None
