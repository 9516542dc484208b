"""Take tasks from the queue, work (1 s per '.' by default), ack each one when it is done.

    python listening_worker.py                      # run as many copies as you like
    python listening_worker.py --name alice --exit-when-idle 10
    python listening_worker.py --handler mytasks:resize --concurrency 4 --task-timeout 60
    python listening_worker.py --command "convert {} -resize 50% small/{}"

Installed with pip, the same command is ``taskqueue-worker`` (same options).
"""

from __future__ import annotations

import argparse
import os
import socket

from taskqueue.broker.config import DEFAULT_DELIVERY_LIMIT, DEFAULT_MAX_TASK_BYTES, mask_url
from taskqueue.cli import (
    add_broker_options,
    add_retention_options,
    broker_settings,
    on_dump_signal,
    on_stop_signals,
    positive_float,
    positive_int,
    queue_spec,
    run_script,
    script_parser,
    seconds_above_zero,
)
from taskqueue.log import get_logger
from taskqueue.worker.command import CommandWork, split_command
from taskqueue.worker.consumer import TaskConsumer, WorkerOptions
from taskqueue.worker.reaper import REAPER
from taskqueue.worker.work import (
    InProcessHandler,
    IsolatedHandler,
    Runner,
    SimulatedWork,
    load_handler,
    start_runners,
)

SCRIPT = "listening_worker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    work = parser.add_argument_group("work")
    work.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}",
                      help="this worker's name in logs and reports (default: HOSTNAME-PID)")
    work.add_argument("--seconds-per-dot", type=positive_float, default=1.0,
                      help="simulated work per '.' in the task (default: %(default)s)")
    work.add_argument("--handler", metavar="MODULE:FUNCTION",
                      help="real work: FUNCTION(task_text), run in a child process of its own; "
                           "an exception fails the task (retried, then dead-lettered), its "
                           "return value is the task's result")
    work.add_argument("--in-process", action="store_true",
                      help="with --handler: call it in the worker's own process (no crash "
                           "isolation, no --task-timeout)")
    work.add_argument("--command", metavar='"PROGRAM ARG {} ARG"',
                      help="real work: run PROGRAM once per task, {} replaced by the task text "
                           "as one argument (appended if there is no {}); exit code 0 is done")
    work.add_argument("--concurrency", type=positive_int, default=1, metavar="N",
                      help="tasks this worker does at once, each in a slot of its own "
                           "(default: %(default)s)")
    work.add_argument("--task-timeout", type=seconds_above_zero, metavar="SECONDS",
                      help="stop a task still running after this long; the attempt fails "
                           "(default: no limit)")
    work.add_argument("--exit-when-idle", type=positive_float, metavar="SECONDS",
                      help="exit 0 once connected and no task came for this long (default: "
                           "run until stopped)")
    work.add_argument("--max-retries", type=int, default=3,
                      help="retries of a failing task before it goes to <queue>.dead "
                           "(default: %(default)s)")
    work.add_argument("--retry-delay", type=positive_float, default=2.0, metavar="SECONDS",
                      help="wait before a failed task is tried again (default: %(default)s)")
    work.add_argument("--delivery-limit", type=positive_int, default=DEFAULT_DELIVERY_LIMIT,
                      help="quorum queues: a task delivered this many times without an ack "
                           "(it crashes or hangs its workers) goes to <queue>.dead "
                           "(default: %(default)s)")
    work.add_argument("--max-task-bytes", type=positive_int, default=DEFAULT_MAX_TASK_BYTES,
                      help="larger messages are dead-lettered unread (default: %(default)s)")
    add_retention_options(parser.add_argument_group("results record"))
    work.add_argument("--no-events", dest="events", action="store_false",
                      help="publish no live events (the live view will not see this worker; "
                           "its results are recorded all the same)")
    add_broker_options(parser)
    args = parser.parse_args(argv)
    if args.max_retries < 0:
        parser.error("--max-retries must be 0 or more")
    if args.handler and args.command:
        parser.error("give --handler or --command, not both")
    if args.in_process and not args.handler:
        parser.error("--in-process needs --handler")
    if args.in_process and args.task_timeout:
        parser.error("--task-timeout cannot stop an --in-process handler; leave out "
                     "--in-process (the handler then runs in a child process a timeout can stop)")
    return args


def make_runners(args: argparse.Namespace) -> tuple[list[Runner], str]:
    """One runner per slot, started (children loaded); and how the work is described."""
    count, timeout = args.concurrency, args.task_timeout
    if args.command:
        argv = split_command(args.command)
        return [CommandWork(argv, timeout) for _ in range(count)], f"--command {args.command!r}"
    if args.handler and args.in_process:
        handler = load_handler(args.handler)
        return [InProcessHandler(handler) for _ in range(count)], f"{args.handler} (in-process)"
    if args.handler:
        children = [IsolatedHandler(args.handler, timeout, f"{args.name}/{n}")
                    for n in range(1, count + 1)]
        start_runners(children)
        return [*children], f"{args.handler} in {count} child process{'es' * (count > 1)}"
    return ([SimulatedWork(args.seconds_per_dot, timeout) for _ in range(count)],
            f"{args.seconds_per_dot:g} s per '.'")


def main() -> int:
    args = parse_args()
    log = get_logger(SCRIPT, args.log_level)
    settings, spec = broker_settings(args), queue_spec(args)
    job_problem = REAPER.start()  # Windows: before any child exists, so that each is in the job
    if job_problem:
        log.warning("[%s] %s", args.name, job_problem)
    runners, work = make_runners(args)  # a handler that cannot load stops us before consuming
    options = WorkerOptions(name=args.name, exit_when_idle=args.exit_when_idle,
                            max_retries=args.max_retries, retry_delay=args.retry_delay,
                            max_task_bytes=args.max_task_bytes,
                            delivery_limit=args.delivery_limit, events=args.events)
    consumer = TaskConsumer(settings, spec, log, options, runners)
    on_stop_signals(consumer)
    on_dump_signal()
    limit = f", tasks stopped after {args.task_timeout:g} s" if args.task_timeout else ""
    log.info("[%s] starting: queue %r at %s; work: %s%s", args.name, spec.name,
             mask_url(settings.urls[0]), work, limit)
    try:
        consumer.run()
    finally:
        for slot in consumer.slots:
            slot.close()
        REAPER.close()
        log.info(consumer.stats.summary(args.name, consumer.slots))
        tail = consumer.tail  # what reading the record cost: it must not grow with workers
        log.info("[%s] results record: %d deliveries checked; %d records read in %d "
                 "readings", args.name, tail.checks, tail.records_read, tail.readings)
    return 0


def entry() -> None:
    """The console script (``pip install``) and the top-level script both start here."""
    run_script(SCRIPT, main)
