#!/usr/bin/env python3
"""Take tasks from the queue one at a time, work (1 s per '.' by default), ack when done.

    python listening_worker.py                      # run as many copies as you like
    python listening_worker.py --name alice --exit-when-idle 10
"""

from __future__ import annotations

import argparse
import os
import socket

from taskqueue.cli import (
    add_broker_options,
    broker_settings,
    on_stop_signals,
    positive_float,
    positive_int,
    queue_spec,
    run_script,
    script_parser,
)
from taskqueue.config import DEFAULT_MAX_TASK_BYTES, mask_url
from taskqueue.consumer import TaskConsumer, WorkerOptions, load_handler, sleep_per_dot
from taskqueue.tasks import seconds_for
from util_logger import get_logger

SCRIPT = "listening_worker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__)
    work = parser.add_argument_group("work")
    work.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}",
                      help="this worker's name in logs and reports (default: HOSTNAME-PID)")
    work.add_argument("--seconds-per-dot", type=positive_float, default=1.0,
                      help="simulated work per '.' in the task (default: %(default)s)")
    work.add_argument("--handler", metavar="MODULE:FUNCTION",
                      help="do real work: call FUNCTION(task_text) instead of sleeping per dot; "
                           "an exception fails the task (retried, then dead-lettered)")
    work.add_argument("--exit-when-idle", type=positive_float, metavar="SECONDS",
                      help="exit 0 once no task arrived for this long (default: run until "
                           "stopped)")
    work.add_argument("--max-retries", type=int, default=3,
                      help="retries of a failing task before it goes to <queue>.dead "
                           "(default: %(default)s)")
    work.add_argument("--retry-delay", type=positive_float, default=2.0, metavar="SECONDS",
                      help="wait before a failed task is tried again (default: %(default)s)")
    work.add_argument("--max-task-bytes", type=positive_int, default=DEFAULT_MAX_TASK_BYTES,
                      help="larger messages are dead-lettered unread (default: %(default)s)")
    work.add_argument("--no-events", dest="events", action="store_false",
                      help="do not publish per-task events for task_report.py")
    add_broker_options(parser)
    args = parser.parse_args(argv)
    if args.max_retries < 0:
        parser.error("--max-retries must be 0 or more")
    return args


def main() -> int:
    args = parse_args()
    log = get_logger(SCRIPT, args.log_level)
    settings, spec = broker_settings(args), queue_spec(args)
    handler = load_handler(args.handler) if args.handler else sleep_per_dot(args.seconds_per_dot)
    expected = (lambda text: seconds_for(text, args.seconds_per_dot)) if not args.handler else (
        lambda _text: 0.0)
    options = WorkerOptions(name=args.name, handler=handler, expected_seconds=expected,
                            exit_when_idle=args.exit_when_idle, max_retries=args.max_retries,
                            retry_delay=args.retry_delay, max_task_bytes=args.max_task_bytes,
                            events=args.events, inline_when_instant=not args.handler)
    consumer = TaskConsumer(settings, spec, log, options)
    on_stop_signals(lambda: consumer.call_threadsafe(consumer.request_stop))
    log.info("[%s] starting: queue %r at %s", args.name, spec.name, mask_url(settings.urls[0]))
    try:
        consumer.run()
    finally:
        log.info(consumer.stats.summary(args.name))
    return 0


if __name__ == "__main__":
    run_script(SCRIPT, main)
