"""Operate the queue from any machine that reaches the broker: put dead tasks back, pause and
resume the workers, cancel a run, stop workers (as SIGTERM would), delete a queue and all of
its companions.

    python task_control.py requeue-dead                       # every task in <queue>.dead
    python task_control.py requeue-dead --reason "timed out" --run 20261130T101500Z-ab12cd
    python task_control.py requeue-dead --limit 100 --dry-run
    python task_control.py discard-dead --reason "timed out" --dry-run  # delete dead tasks for good
    python task_control.py pause                              # finish what is in hand
    python task_control.py resume
    python task_control.py cancel --run 20261130T101500Z-ab12cd
    python task_control.py cancel --run 20261130T101500Z-ab12cd --row 3 --row 15 [--dry-run]
    python task_control.py cancel --run 20261130T101500Z-ab12cd --match "customer 42"
    python task_control.py cancel --id tasks.csv:3:5f2a9c01d4e7
    python task_control.py stop-workers [--name alice]
    python task_control.py rate-limit 20/s                    # task starts, over all workers
    python task_control.py rate-limit 100/min --per-key       # each x-key (--key-column) apart
    python task_control.py rate-limit off
    python task_control.py delete-queue [--dry-run] [--yes] [--force]   # and its companions
    python task_control.py retention --max-age 30D --max-bytes 20GB   # the results stream's
    python task_control.py retention --stream control --max-bytes 50MB
    python task_control.py status                  # streams' extent and size, the rate limit

Installed with pip, the same command is ``taskqueue-control`` (same options).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from taskqueue.admin import ask_yes_no
from taskqueue.broker.blocking import open_blocking
from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.cli import (
    add_broker_options,
    broker_settings,
    keyboard_attached,
    positive_int,
    queue_spec,
    retention_age,
    run_script,
    script_parser,
)
from taskqueue.commands.cancel_survey import survey
from taskqueue.control import commands, discard
from taskqueue.control.ratelimit import RateLimit, format_rate, parse_rate
from taskqueue.control.remove import QueueRemover, confirm
from taskqueue.control.requeue import DeadFilter, DeadMover, progress_printer
from taskqueue.control.retention import (
    Management,
    PolicyKeeper,
    StreamPolicy,
    parse_bytes,
    retention_in_effect,
    show_bytes,
    unreachable,
)
from taskqueue.control.state import Selection
from taskqueue.control.stream_size import measure
from taskqueue.log import get_logger

SCRIPT = "task_control"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    requeue = sub.add_parser("requeue-dead", help="move tasks from <queue>.dead back to the "
                             "queue, retry counts reset (e.g. requeue-dead --reason timeout)")
    requeue.add_argument("--reason", help="only tasks whose reason contains TEXT (ours or the "
                         "broker's), e.g. --reason 'timed out'")
    requeue.add_argument("--run", metavar="ID", help="only tasks of this emitter run")
    requeue.add_argument("--limit", type=positive_int, metavar="N", help="stop after N moved")
    requeue.add_argument("--dry-run", action="store_true",
                         help="count and list what would move; move nothing")
    discard_dead = discard.add_parser(sub)
    sub.add_parser("pause", help="workers finish the tasks in hand and take no new ones")
    sub.add_parser("resume", help="workers take tasks again")
    cancel = sub.add_parser("cancel", help="tasks of a run, or some of them, are not run; "
                            "those running stop (e.g. cancel --run 20261130T101500Z-ab12cd "
                            "--row 3)")
    cancel.add_argument("--run", metavar="ID",
                        help="the emitter run (its id is in the emitter's log); alone: all of "
                             "its tasks")
    cancel.add_argument("--row", type=positive_int, action="append", metavar="N",
                        help="only the task of row N of the run (repeat it for more)")
    cancel.add_argument("--id", action="append", metavar="MESSAGE_ID", dest="ids",
                        help="only the task with this message id (repeatable; without --run, "
                             "in any run begun before now)")
    cancel.add_argument("--match", metavar="TEXT",
                        help="only the run's tasks whose text contains TEXT, as it is (plain "
                             "text, case and all; not a pattern)")
    cancel.add_argument("--dry-run", action="store_true",
                        help="list the tasks it selects and their state; send nothing")
    stop = sub.add_parser("stop-workers", help="workers finish the tasks in hand and exit 0, "
                          "as after SIGTERM (e.g. stop-workers --name alice)")
    stop.add_argument("--name", help="only this worker (default: every worker)")
    rate = sub.add_parser("rate-limit", help="at most RATE task starts, over all workers "
                          "(e.g. rate-limit 20/s, rate-limit 100/min --per-key, rate-limit off)")
    rate.add_argument("rate", type=rate_or_off, metavar="RATE",
                      help="N/s, N/min or N/h (decimals allowed, at most 5000/s), or off")
    rate.add_argument("--per-key", action="store_true",
                      help="the rate for each key apart (the x-key header: the emitter's "
                           "--key-column); tasks without one share the key ''")
    delete = sub.add_parser("delete-queue", help="delete the queue, its .retry, .dead, .urgent, "
                            ".urgent.retry, .ratelimit, .wait.<N>s, .events, .results and "
                            ".control, and the <queue>.events exchange, messages and all (e.g. "
                            "delete-queue --queue shot_q --dry-run)")
    delete.add_argument("--dry-run", action="store_true",
                        help="list what exists and would be deleted; delete nothing")
    delete.add_argument("--yes", action="store_true",
                        help="do not ask (needed when stdin is not a terminal)")
    delete.add_argument("--force", action="store_true",
                        help="delete even while workers consume the queue (they would declare "
                             "it again: stop them first with stop-workers)")
    retention = sub.add_parser("retention", help="how long the results (or control) stream "
                               "keeps records, set with a RabbitMQ policy so a stream that "
                               "exists follows it (e.g. retention --max-age 30D --max-bytes 20GB)")
    retention.add_argument("--stream", choices=("results", "control"), default="results",
                           help="<queue>.results (default) or <queue>.control")
    retention.add_argument("--max-age", type=retention_age, metavar="AGE",
                           help="keep records this long, older segments going (30D, 12h; "
                                "Y M D h m s)")
    retention.add_argument("--max-bytes", type=size, metavar="SIZE",
                           help="... and at most this much, the oldest going first (20GB, "
                                "500MB, or bytes)")
    retention.add_argument("--replace", action="store_true",
                           help="set ours even where a policy of yours applies to the stream "
                                "(its keys are copied into ours)")
    status = sub.add_parser("status", help="each stream's extent: messages, oldest and newest, "
                            "size (estimated: AMQP does not say it), retention")
    for command in (retention, status):
        command.add_argument("--management-url", metavar="URL", help="the management plugin's "
                             "HTTP API (default: the broker's host, port 15672)")
    for command in (requeue, discard_dead, sub.choices["pause"], sub.choices["resume"], cancel,
                    stop, rate, delete, retention, status):
        add_broker_options(command)
    args = parser.parse_args(argv)
    if args.command == "retention" and args.max_age is None and args.max_bytes is None:
        retention.error("give --max-age, --max-bytes or both")
    if args.command == "cancel":
        problem = cancel_problem(args)
        if problem:
            cancel.error(problem)
    if args.command == "rate-limit" and args.rate is None and args.per_key:
        rate.error("rate-limit off takes no --per-key")
    return args


def rate_or_off(text: str) -> RateLimit | None:
    """A rate-limit's RATE: the limit, or None for ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        per_second = parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return RateLimit(per_second, False, format_rate(per_second))


def cancel_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with cancel's selectors, or None."""
    if args.run is None and not args.ids:
        return "give --run ID (its tasks, or with --row / --match some of them) or --id"
    if args.run is None and (args.row or args.match is not None):
        return "--row and --match select within a run: give --run ID too"
    if args.match == "":
        return "--match needs some text (an empty one would select every task)"
    if args.ids and not all(args.ids):
        return "--id needs a message id"
    return None


def cancel_selection(args: argparse.Namespace) -> Selection | None:
    """What cancel's options select; None: the whole run."""
    if not (args.row or args.ids or args.match is not None):
        return None
    return Selection(args.run, frozenset(args.row or ()), frozenset(args.ids or ()),
                     args.match)


def size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main() -> int:
    args = parse_args()
    log = get_logger(SCRIPT, args.log_level)
    settings, spec = broker_settings(args), queue_spec(args)
    if args.command == "requeue-dead":
        return requeue_dead(args, settings, spec, log)
    if args.command == "discard-dead":
        return discard.command(args, settings, spec, log)
    if args.command == "delete-queue":
        return delete_queue(args, settings, spec)
    if args.command == "retention":
        return set_retention(args, settings, spec)
    if args.command == "status":
        return show_status(args, settings, spec)
    if args.command == "cancel":
        return cancel(args, settings, spec)
    if args.command == "rate-limit":
        return rate_limit(args, settings, spec)
    what = done_text(args, spec.name)
    kind = "stop" if args.command == "stop-workers" else args.command
    outcome = commands.send(settings, spec, kind, run=getattr(args, "run", None),
                            worker=getattr(args, "name", None))
    print(commands.summary(outcome, what))
    return 0


def cancel(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec) -> int:
    """A whole run (``cancel``) or the tasks selected (``cancel-tasks``); --dry-run: the
    tasks it would select and their state, nothing sent. Given, it goes out first (each moment
    counts for a running task); then the run's record says which were over already."""
    selection = cancel_selection(args)
    what = f"run {args.run}" if selection is None else selection.describe()
    if args.dry_run:
        if args.run is None:
            print(f"dry run: would cancel {what} in any run begun before now, wherever it is "
                  "queued or running (give --run to see its state: without it the whole "
                  "results stream would be read); nothing sent")
            return 0
        found = survey(settings, spec, args.run, selection)
        print(f"dry run: cancel would select {len(found.tasks)} task(s) of run {args.run} "
              f"known so far: {found.counts()}; nothing sent")
        print("\n".join(found.lines()))
        if selection is not None and selection.match is not None:
            print(f"  (tasks not taken yet are in no record: those containing "
                  f"{selection.match!r} are cancelled when a worker takes them)")
        elif selection is None and found.published is not None:
            print(f"  (the run published {found.published} task(s); those with no record and "
                  "not running are queued)")
        return 0
    kind = "cancel" if selection is None else "cancel-tasks"
    outcome = commands.send(settings, spec, kind, run=args.run if selection is None else None,
                            selection=selection)
    print(commands.summary(outcome, f"cancelled {what} on queue {spec.name!r} (by "
                                    f"{outcome.record.get('by')})"))
    if selection is not None and args.run is not None:
        over = survey(settings, spec, args.run, selection,
                      until=outcome.record["time"]).lines(only="over")
        if over:
            print("over already, nothing changes for them:\n" + "\n".join(over))
    return 0


def rate_limit(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec) -> int:
    """Append the limit (or off) to the control stream; running workers apply it at once,
    later ones when they read the stream (the last one given wins)."""
    limit = args.rate if args.rate is None else replace(args.rate, per_key=args.per_key)
    outcome = commands.send(settings, spec, "rate-limit", limit=limit)
    if limit is None:
        what = f"rate limit off on queue {spec.name!r}"
    else:
        what = (f"rate limit {limit.text}{' per key' if limit.per_key else ''} on queue "
                f"{spec.name!r}")
    print(commands.summary(outcome, f"{what} (by {outcome.record.get('by')})"))
    return 0


def done_text(args: argparse.Namespace, queue: str) -> str:
    """What the summary line says was done."""
    if args.command == "stop-workers":
        who = f"worker {args.name}" if args.name else "every worker"
        return f"asked {who} of queue {queue!r} to stop"
    return f"{args.command}d queue {queue!r}"  # paused, resumed


def requeue_dead(args: argparse.Namespace, settings, spec, log) -> int:
    chosen = DeadFilter(args.reason, args.run, args.limit)
    mover = DeadMover(settings, spec, log, chosen, dry_run=args.dry_run,
                      on_progress=progress_printer())
    mover.run()
    stats = mover.stats
    if sys.stderr.isatty() and stats.seen:
        sys.stderr.write("\n")
    if args.dry_run:
        print(f"dry run: {stats.moved} of the {stats.total} tasks in {spec.dead_name!r} would "
              f"move back to {spec.name!r}; nothing moved")
        for line in stats.shown:
            print(f"  {line}")
        return 0
    print(f"requeue-dead: {stats.seen} of the {stats.total} tasks in {spec.dead_name!r} looked "
          f"at: {stats.moved} moved back to {spec.name!r} (retry counts reset), {stats.kept} "
          f"left in {spec.dead_name!r}"
          + (f", {stats.refused} refused by the broker (still there)" if stats.refused else "")
          + f"; {stats.rate:,.0f} tasks/s")
    return 0


def delete_queue(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec) -> int:
    """List what exists; unless --dry-run, confirm and delete it. The connection is not held
    while the user thinks (its heartbeat would lapse): the deletion looks again on a new one."""
    connection = open_blocking(settings)
    try:
        found = QueueRemover(connection, spec).survey()
    finally:
        if connection.is_open:
            connection.close()
    if not found.anything:
        print(f"nothing to delete: no queue, stream or exchange of queue {spec.name!r} exists")
        return 0
    print(f"{'would delete' if args.dry_run else 'found'} for queue {spec.name!r}:")
    for line in found.lines():
        print(line)
    if args.dry_run:
        busy = (f"; it has {found.consumers} consumer(s): without --force delete-queue would "
                "refuse" if found.consumers else "")
        print(f"dry run: {len(found.queues)} queues and streams holding {found.messages} "
              f"messages{', and the exchange' if found.exchange else ''}; nothing deleted{busy}")
        return 0
    interactive = keyboard_attached()
    if not confirm(found, yes=args.yes, force=args.force, interactive=interactive,
                   ask=ask_yes_no):
        print("nothing deleted")
        return 0
    connection = open_blocking(settings)
    try:
        removed = QueueRemover(connection, spec).remove(force=args.force)
    finally:
        if connection.is_open:
            connection.close()
    print(removed.summary())
    return 0


def set_retention(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec) -> int:
    """Our policy for the stream, through the management API; without one, the rabbitmqctl
    line to run on a broker node (stdout) and why nothing was set (stderr, exit 3)."""
    stream = spec.results_name if args.stream == "results" else spec.control_name
    wanted = StreamPolicy(stream, args.max_age, args.max_bytes)
    api = Management.for_broker(settings.urls[0], args.management_url)
    if not api.answers():
        print(wanted.rabbitmqctl_line(api.vhost))
        raise unreachable(api)
    applied = PolicyKeeper(api).set(wanted, replace=args.replace)
    kept = " and ".join(part for part in (
        f"{args.max_age}" if args.max_age else "",
        f"at most {show_bytes(args.max_bytes)}" if args.max_bytes else "") if part)
    taken = (f"; it takes over from the policy {applied.replaced.get('name')!r} for that "
             "stream (its keys copied in)" if applied.replaced else "")
    print(f"retention of {stream!r}: {kept} (policy {wanted.name!r}, applies to the stream as "
          f"it is now){taken}")
    if args.stream == "control" and args.max_age:
        print(f"note: commands older than {args.max_age} go: a pause or a cancel given before "
              "then is forgotten by workers that start afterwards")
    return 0


def show_status(args: argparse.Namespace, settings: BrokerSettings, spec: QueueSpec) -> int:
    """Each stream's extent (with the management API, the retention in effect too), and the
    rate limit in force with the tasks parked by it."""
    api = Management.for_broker(settings.urls[0], args.management_url)
    answers = api.answers()
    connection = open_blocking(settings)
    try:
        sizes = {}
        for stream in spec.streams:
            sizes[stream] = size = measure(connection, stream)
            held = api.queue(stream) if answers and size.exists else None
            print(size.line() + (f"; {retention_in_effect(held)}" if held else ""))
        control = commands.in_force(connection, spec, sizes[spec.control_name].last)
        print(commands.rate_line(control, commands.parked(connection, spec)))
    finally:
        if connection.is_open:
            connection.close()
    if not answers:
        print(f"(the retention in effect is not shown: the management API does not answer at "
              f"{api.base}; on a broker node: rabbitmqctl list_queues name policy arguments)")
    return 0


def entry() -> None:
    """The console script (``pip install``) and the top-level script both start here."""
    run_script(SCRIPT, main)
