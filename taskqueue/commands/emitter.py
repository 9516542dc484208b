"""Publish tasks (one per CSV row) to a durable RabbitMQ queue, every one confirmed.

    python emitter_of_tasks.py                     # tasks.csv -> task_queue
    python emitter_of_tasks.py --file jobs.csv --resume
    python emitter_of_tasks.py --message "Hello..." --message "Bye."
    python emitter_of_tasks.py --file jobs.csv --skip-done --wait --results out.csv
    python emitter_of_tasks.py --file jobs.csv --wait --halt-after 5%   # fail fast
    python emitter_of_tasks.py --file jobs.csv --header --column job --key-column host

Installed with pip, the same command is ``taskqueue-emit`` (same options).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from taskqueue import admin
from taskqueue.broker.config import DEFAULT_MAX_TASK_BYTES, BrokerSettings, QueueSpec, mask_url
from taskqueue.broker.urgent import PRIORITIES
from taskqueue.cli import (
    add_broker_options,
    add_retention_options,
    broker_settings,
    keyboard_attached,
    on_stop_signals,
    positive_int,
    queue_spec,
    run_script,
    script_parser,
)
from taskqueue.emitter.done_rows import SkipDone, done_ids
from taskqueue.emitter.halt import Halt, HaltAfter, run_canceller
from taskqueue.emitter.progress import Progress, count_rows
from taskqueue.emitter.publisher import CONFIRM_WINDOWS, ConfirmedPublisher
from taskqueue.emitter.resume import MAX_REFUSED_KEPT, ResumeState
from taskqueue.emitter.tasks import Task, check_header, read_tasks, tasks_from_messages
from taskqueue.errors import EXIT_INCOMPLETE, EXIT_SOME_FAILED, UserError
from taskqueue.log import get_logger, log_dir
from taskqueue.results.history import History
from taskqueue.results.reader import RecordReader
from taskqueue.results.table import write_tasks_file
from taskqueue.results.waiting import OutcomeWaiter
from taskqueue.wire.record import new_run_id

SCRIPT = "emitter_of_tasks"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    source = parser.add_argument_group("tasks")
    source.add_argument("--file", default="tasks.csv",
                        help="CSV file, one task per non-blank line; - reads stdin "
                             "(default: %(default)s)")
    source.add_argument("--header", action="store_true",
                        help="the file has a header row; take the tasks from --column")
    source.add_argument("--column", metavar="NAME|INDEX",
                        help="with --header: the column holding the task (name, or number from 1;"
                             " default: the first)")
    source.add_argument("--key-column", metavar="NAME|INDEX",
                        help="with --header: the column holding each task's rate-limit key "
                             "(header x-key, at most 256 bytes; an empty cell: no key), for "
                             "task_control.py rate-limit --per-key")
    source.add_argument("--message", action="append", metavar="TEXT",
                        help="publish this task instead of the file (repeatable)")
    source.add_argument("--max-task-bytes", type=positive_int, default=DEFAULT_MAX_TASK_BYTES,
                        help="longest task accepted, in bytes (default: %(default)s)")
    source.add_argument("--priority", choices=PRIORITIES, default="normal",
                        help="high: every worker starts these before waiting normal tasks "
                             "(they go to <queue>.urgent; docs/queue-types.md) "
                             "(default: %(default)s)")
    source.add_argument("--resume", action="store_true",
                        help="continue an earlier, interrupted run of this file (state kept "
                             "in logs/): after it ended with every row answered, publish again "
                             "only the rows the broker refused, then the rows after the last "
                             "one it read; else start after the last row up to which every "
                             "row was confirmed")
    source.add_argument("--skip-done", action="store_true",
                        help="publish only the rows with no done record in any earlier run of "
                             "this file (the results record, <queue>.results)")
    results = parser.add_argument_group("results")
    results.add_argument("--wait", action="store_true",
                         help="after publishing, wait until every task has an outcome (done, "
                              "dead or cancelled); exit 0 if all are done, 6 if not")
    results.add_argument("--halt-after", type=halt_after, metavar="N|N%",
                         help="with --wait: once N tasks of the run (or N%% of them) are dead, "
                              "cancel the rest of it (as task_control.py cancel --run does), "
                              "wait for their outcomes and exit 6")
    results.add_argument("--results", type=Path, metavar="FILE.csv",
                         help="with --wait: write one row per task (task_report.py --csv's "
                              "columns)")
    add_retention_options(results)
    parser.add_argument("--confirm-window", type=positive_int, metavar="N",
                        help="messages in flight before waiting for confirms; after a lost "
                             "connection up to this many may be published twice (default: "
                             f"{CONFIRM_WINDOWS['quorum']:,} on a quorum queue, "
                             f"{CONFIRM_WINDOWS['classic']:,} on a classic one)")
    panel = parser.add_argument_group("admin panel")
    answer = panel.add_mutually_exclusive_group()
    answer.add_argument("--admin", action="store_true", default=None,
                        help="open the RabbitMQ admin panel without asking")
    answer.add_argument("--no-admin", dest="admin", action="store_false",
                        help="do not ask about the admin panel")
    panel.add_argument("--admin-url", help="the panel's address (default: the broker's host, "
                                           "port 15672)")
    add_broker_options(parser)
    args = parser.parse_args(argv)
    if args.column and not args.header:
        parser.error("--column needs --header")
    if args.key_column and not args.header:
        parser.error("--key-column needs --header (the first row names the columns)")
    if args.key_column and args.message:
        parser.error("--key-column reads a column of --file (not --message)")
    if args.resume and (args.message or args.file == "-"):
        parser.error("--resume needs a file (not --message or stdin)")
    if args.skip_done and (args.message or args.file == "-"):
        parser.error("--skip-done needs a file (not --message or stdin)")
    if args.results and not args.wait:
        parser.error("--results needs --wait")
    if args.halt_after and not args.wait:
        parser.error("--halt-after needs --wait")

    return args


def halt_after(text: str) -> HaltAfter:
    """argparse type of --halt-after."""
    try:
        return HaltAfter.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    args = parse_args()
    log = get_logger(SCRIPT, args.log_level)
    if args.header and not args.message and args.file != "-":  # a wrong column: nothing sent
        check_header(args.file, column=args.column, key_column=args.key_column,
                     max_bytes=args.max_task_bytes)
    settings, spec = broker_settings(args), queue_spec(args)
    maybe_offer_panel(args, settings.urls[0], log)

    state = None if (args.message or args.file == "-") else ResumeState(
        log_dir(), args.file, spec.name)
    run_id = new_run_id(suffix=uuid.uuid4().hex[:6])
    again_through = 0  # rows an earlier emitter of this run may have published
    unfinished = state.unfinished_run() if args.resume and state is not None else None
    if state is not None and unfinished:
        run_id = unfinished  # the same run: rows it had done are not run again
        published = state.published_through()
        again_through = published if published is not None else sys.maxsize
    tasks, total, skip, replay = open_tasks(args, state, run_id, log)
    if state is not None and unfinished and replay is not None:
        # The earlier run ended with every publish answered: only its refused rows may be
        # in the queue already (a row sent again after a connection loss, then refused);
        # the rows after the last it read were never sent, and need no check.
        again_through = max(replay, default=0)
    skipping = None
    if args.skip_done:
        skipping, total = skip_done(args, settings, spec, total, log)
        tasks = skipping(tasks)

    log.info("publishing to queue %r at %s (run %s)", spec.name, mask_url(settings.urls[0]), run_id)
    progress = Progress(log, total)
    publisher = ConfirmedPublisher(
        replace(settings, client_name=f"emitter_of_tasks run {run_id}"), spec, tasks, log,
        window=args.confirm_window, run_id=run_id, on_tick=progress.update, state=state,
        start_after=skip, total=total, interactive_input=args.file == "-",
        again_through=again_through, priority=args.priority, replay=replay or [])
    on_stop_signals(publisher)
    try:
        publisher.run()
    finally:  # also when the broker stayed away: say how far the run got
        progress.done()
        publisher.save_state(complete=publisher.stats.rejected == 0 and not publisher.stop_requested
                             and publisher.input_error is None, end=True)
        log_summary(publisher, log, skipping)
    status = exit_status(publisher, log)
    if args.wait and status == 0 and not publisher.stop_requested:
        return wait_for_results(args, settings, spec, run_id, publisher, log)
    return status


def skip_done(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec,
              total: int | None, log: logging.Logger) -> tuple[SkipDone, int | None]:
    """Read the record for the rows of this file done before (any run); count them."""
    log.info("reading the results record %r for rows of %s done before", spec.results_name,
             args.file)
    label = Path(args.file).name
    done = done_ids(RecordReader(settings, spec).records(), label)
    counting = SkipDone(done)
    for _task in counting(read_tasks(args.file, header=args.header, column=args.column,
                                     max_bytes=args.max_task_bytes)):
        pass
    log.info("%d rows of %s are done already: skipping them", counting.skipped, args.file)
    return SkipDone(done), None if total is None else max(0, total - counting.skipped)


def wait_for_results(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec,
                     run_id: str, publisher: ConfirmedPublisher, log: logging.Logger) -> int:
    """--wait: every published task's outcome, then the results file; 0, or 6 if not all
    are done (or --halt-after halted the run). Ctrl+C stops waiting only: the workers go on."""
    expected = sum(publisher.confirmed_rows)
    log.info("waiting for the outcomes of %d tasks (run %s); Ctrl+C stops waiting, the "
             "workers go on", expected, run_id)
    signals = publisher.signals
    waiter = OutcomeWaiter(settings, spec, run_id, publisher.confirmed_rows, expected)
    halt = None if args.halt_after is None else Halt(
        args.halt_after, run_id, expected, cancel=run_canceller(settings, spec, run_id, log),
        say=log.warning)
    if halt is not None:
        log.info("fail fast: once %d of them are dead (%s), the rest of the run is cancelled",
                 halt.at, halt.label)
    outcomes = waiter.wait(should_stop=lambda: publisher.signals > signals,
                           progress=lambda o: log.info("waiting: %s", o.line()), watch=halt)
    later = (f"task_report.py --queue {spec.name} --run {run_id} --csv "
             f"{args.results or 'results.csv'}")
    if outcomes.stopped and outcomes.halted:  # Ctrl+C after the halt: the run is over anyway
        log.warning("halted: %s: the rest of it was cancelled; stopped waiting: %s. Collect "
                    "the results later with: %s", outcomes.halted, outcomes.line(), later)
        return EXIT_SOME_FAILED
    if outcomes.stopped:
        log.warning("stopped waiting: %s; the rest stay with the workers. Collect the results "
                    "later with: %s", outcomes.line(), later)
        return 130
    if not outcomes.halted:
        log.info("all outcomes in: %s", outcomes.line())
    if args.results:
        try:
            with tempfile.TemporaryDirectory(prefix="taskqueue-") as scratch:
                history = History(settings, spec, Path(scratch))  # its copy is only for this
                table = write_tasks_file(args.results, run_id, history.run_records(run_id))
        except OSError as exc:
            raise UserError(f"cannot write --results {str(args.results)!r} ({exc.strerror}); "
                            f"give a writable path, or collect them with: {later}") from None
        log.info("results: %d tasks written to %s", table.tasks, args.results)
    if outcomes.halted:  # the summary, last: why the run ended early
        log.warning("halted: %s: the rest of it was cancelled; %s", outcomes.halted,
                    outcomes.line())
        return EXIT_SOME_FAILED
    if outcomes.dead or outcomes.cancelled:
        log.warning("%d tasks ended dead and %d cancelled (see the results, or "
                    "task_report.py --run %s)", outcomes.dead, outcomes.cancelled, run_id)
        return EXIT_SOME_FAILED
    return 0


def open_tasks(args: argparse.Namespace, state: ResumeState | None, run_id: str,
               log: logging.Logger) -> tuple[Iterator[Task], int | None, int, list[int] | None]:
    """The tasks to publish (streamed), how many there are (when that is known cheaply), the
    row after which this run starts (--resume), and the rows before it published again (those
    the earlier run's broker refused; None: not resumed from a run that ended with every
    publish answered)."""
    if args.message:
        return tasks_from_messages(args.message, run_id), len(args.message), 0, []
    skip, replay = 0, None
    if state and args.resume:
        kept = state.refused_rows()
        if kept is not None and not kept[0]:
            replay, skip = kept
            log.info("resuming %s (run %s) after row %d, the last one the earlier run read (it "
                     "had every row it sent confirmed)", args.file, run_id, skip)
        elif kept is not None:
            replay, skip = kept
            log.info("resuming %s (run %s): %d refused row(s) published again (%s), then the "
                     "rows after row %d, the last one the earlier run read", args.file, run_id,
                     len(replay), row_ranges(replay), skip)
        elif skip := state.confirmed_through():
            log.info("resuming %s (run %s) after row %d: every row up to it was confirmed by "
                     "an earlier run", args.file, run_id, skip)
        elif state.known():
            log.info("resuming %s (run %s) from row 1: the earlier run had no row confirmed "
                     "before its first refused or unconfirmed one", args.file, run_id)
        else:
            log.info("no earlier run of %s on this queue to resume: starting at row 1", args.file)
    tasks = read_tasks(args.file, header=args.header, column=args.column,
                       key_column=args.key_column, max_bytes=args.max_task_bytes,
                       skip_through=skip, run_id=run_id, also_rows=replay or [])
    total = count_rows(args.file)
    return tasks, None if total is None else max(0, total - skip) + len(replay or []), skip, replay


def row_ranges(rows: list[int], most: int = 8) -> str:
    """Ascending rows as ``rows 1-3, 17, 30`` (the first *most* runs, then how many more)."""
    runs: list[list[int]] = []
    for row in rows:
        if runs and row == runs[-1][1] + 1:
            runs[-1][1] = row
        else:
            runs.append([row, row])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs[:most])
    more = sum(b - a + 1 for a, b in runs[most:])
    return ("row " if len(rows) == 1 else "rows ") + text + (f" and {more} more" if more else "")


def resume_advice(publisher: ConfirmedPublisher) -> str:
    """What --resume will do after this run, for the end-of-run lines."""
    rows = publisher.rows_to_resume()
    if rows is None:
        return (f"every row up to {publisher.confirmed_through()} is confirmed; run again with "
                "--resume to continue from there")
    if rows:
        return (f"run again with --resume to publish again {row_ranges(rows)} (only those), "
                f"then the rows after row {publisher.last_row_read}")
    return (f"every row read (through row {publisher.last_row_read}) is confirmed; run again "
            "with --resume to continue after it")


def maybe_offer_panel(args: argparse.Namespace, broker_url: str, log: logging.Logger) -> None:
    """Ask only a person at a terminal; --admin/--no-admin answer up front."""
    want = args.admin
    if want is None and keyboard_attached() and args.file != "-":
        want = admin.ask_yes_no("Would you like to monitor RabbitMQ queues?")
    if want:
        admin.offer_panel(admin.admin_url(broker_url, args.admin_url), True, log)
        queue = "" if args.queue == "task_queue" else f" --queue {args.queue}"
        log.info("or this queue's own dashboard (tasks, workers, results, control): "
                 "python task_report.py --serve%s", queue)


def log_summary(publisher: ConfirmedPublisher, log: logging.Logger,
                skipping: SkipDone | None = None) -> None:
    """The end-of-run summary line, whatever ended the run."""
    stats = publisher.stats
    if skipping is not None:
        log.info("skipped %d rows done before (--skip-done)", skipping.skipped)
    depth = "?" if stats.queue_depth is None else stats.queue_depth
    consumers = "?" if stats.consumers is None else stats.consumers
    log.info("summary: %d rows read, %d confirmed, %d rejected, %d republished after a "
             "connection loss, %.2f s, %.0f msg/s; queue %r now holds %s messages, %s consumers",
             stats.read, stats.confirmed, stats.rejected, stats.republished, stats.seconds,
             stats.rate, publisher.queue.name, depth, consumers)
    if stats.republished_rows:
        low, high = stats.republished_rows
        log.warning("%d messages (rows %d-%d) were published again after a connection loss: "
                    "the broker may hold some of them twice (same message_id)",
                    stats.republished, low, high)
    if publisher.refused is None and publisher.resumable:
        log.warning("more than %d rows were refused: too many to keep one by one, so --resume "
                    "starts after row %d, the last up to which every row is confirmed (rows "
                    "accepted after it are published again too)", MAX_REFUSED_KEPT,
                    publisher.confirmed_through())
    elif stats.confirmed < stats.read and publisher.resumable:
        log.warning("%s", resume_advice(publisher))


def exit_status(publisher: ConfirmedPublisher, log: logging.Logger) -> int:
    """0 when every row read was confirmed (or the user asked to stop); else a UserError."""
    stats = publisher.stats
    through = publisher.confirmed_through()
    if publisher.input_error:
        hint = (f" (rows up to {through} were published; fix the file and run again with "
                "--resume to continue from there)") if publisher.resumable else ""
        raise UserError(f"{publisher.input_error}{hint}", publisher.input_error.exit_code)
    if stats.rejected:
        advice = resume_advice(publisher) if publisher.resumable else \
            "publish them again once the broker has room"
        raise UserError(f"{stats.rejected} rows were refused by the broker (see the log); "
                        f"{advice}", EXIT_INCOMPLETE)
    if publisher.stop_requested:
        log.warning("stopped on request: %s", resume_advice(publisher))
    return 0



def entry() -> None:
    """The console script (``pip install``) and the top-level script both start here."""
    run_script(SCRIPT, main)
