"""Who did what: read the results record of a run and print a table and a timeline picture;
or watch the workers live.

    python task_report.py                          # latest run on task_queue
    python task_report.py --queue demo_task_queue --run 20261128T101500Z-ab12cd
    python task_report.py --csv results.csv        # one row per task: worker, result or error
    python task_report.py --list                   # the runs recorded
    python task_report.py --watch                  # live: every worker, its task, the queue
    python task_report.py --serve                  # the same and more, in a browser
    python task_report.py --serve --queue jobs --queue mail   # several queues, one server

Installed with pip, the same command is ``taskqueue-report`` (same options).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from taskqueue.cli import (
    add_broker_options,
    broker_settings,
    queue_spec,
    run_script,
    script_parser,
    seconds_above_zero,
)
from taskqueue.errors import UserError
from taskqueue.log import get_logger
from taskqueue.results.history import History
from taskqueue.results.table import write_tasks_file
from taskqueue.views.report import RunReport, run_attempts
from taskqueue.views.store import list_runs, queue_status
from taskqueue.views.watch import watch
from taskqueue.web.access import DEFAULT_BIND

SCRIPT = "task_report"
REPORTS = Path("reports")  # in the directory the command runs in


def parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__)
    parser.add_argument("--run", metavar="RUN_ID",
                        help="which emitter run (its id is in the emitter's log; default: latest)")
    parser.add_argument("--reports-dir", type=Path, default=REPORTS, metavar="DIR",
                        help="where pictures and local copies of runs are kept (default: "
                             "reports/)")
    parser.add_argument("--svg", type=Path, metavar="PATH",
                        help="where to write the timeline (default: DIR/<queue>-<run>.svg)")
    parser.add_argument("--offline", action="store_true",
                        help="use only the local copies of runs read before (and older "
                             "versions' files); do not contact the broker")
    parser.add_argument("--list", action="store_true",
                        help="list the runs recorded instead of reporting one")
    parser.add_argument("--tasks", action="store_true",
                        help="list every attempt of the run, however many (a run of more than "
                             "50 lists its failures and slowest tasks; --csv has every task)")
    parser.add_argument("--status", action="store_true",
                        help="show the queue and its companions now (waiting, in progress, "
                             "retrying, dead) and exit")
    live = parser.add_argument_group("live view")
    live.add_argument("--watch", action="store_true",
                      help="show every worker, its task in hand, the queue and the ETA, live "
                           "(refreshed every --interval seconds; Ctrl+C to leave)")
    live.add_argument("--until-done", action="store_true",
                      help="with --watch: end once the queue is empty and every worker idle")
    live.add_argument("--interval", type=seconds_above_zero, default=1.0, metavar="SECONDS",
                      help="with --watch or --serve: seconds between refreshes (default: "
                           "%(default)s)")
    web = parser.add_argument_group("web view (pip install \"taskqueue[web]\")")
    web.add_argument("--serve", action="store_true",
                     help="serve the dashboard: live view, runs, dead tasks, control buttons, "
                          "/metrics (Ctrl+C to stop)")
    web.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                     help="with --serve: where to listen (default: %(default)s; anything but "
                          "loopback needs --auth-file)")
    web.add_argument("--auth-file", type=Path, metavar="FILE",
                     help="with --serve: log in with the USER:PASSWORD on the file's first "
                          "line (default: a random token in the printed address)")
    web.add_argument("--public-url", metavar="URL",
                     help="with --serve behind a reverse proxy: the address browsers use, e.g. "
                          "https://ops.example.com/taskqueue/ (its path is the prefix of every "
                          "page; only its origin may post; Secure cookies under https)")
    web.add_argument("--no-browser", action="store_true",
                     help="with --serve: do not open a browser")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="also write one row per task of the run: row, task, worker, host, "
                             "started, seconds, attempts, outcome, result or error")
    add_broker_options(parser)
    args = parser.parse_args()
    args.queues = queues_given(sys.argv[1:], args.queue)
    if len(args.queues) > 1 and not args.serve:
        parser.error("--queue more than once goes with --serve (one dashboard for several "
                     "queues); the other views show one queue")
    dots = [name for name in args.queues if name in (".", "..")]
    if len(args.queues) > 1 and dots:
        # Its pages would be under /q/./ or /q/../: a browser reads those as "here" and "up"
        # (encoded too: %2e), so they could never be reached.
        parser.error(f"queue {dots[0]!r} cannot be served beside others (a browser reads "
                     f"/q/{dots[0]}/ as another address); serve it alone: --serve --queue "
                     f"{dots[0]}")
    if args.until_done and not args.watch:
        parser.error("--until-done needs --watch")
    if (args.auth_file or args.no_browser or args.public_url or args.bind != DEFAULT_BIND) \
            and not args.serve:
        parser.error("--bind, --auth-file, --public-url and --no-browser go with --serve")
    clashing = [flag for flag, given in (("--watch", args.watch), ("--offline", args.offline),
                                         ("--csv", args.csv), ("--list", args.list),
                                         ("--status", args.status), ("--run", args.run))
                if given]
    if args.serve and clashing:
        parser.error(f"--serve shows everything itself; leave out {', '.join(clashing)}")
    return args


def queues_given(argv: list[str], last: str) -> list[str]:
    """Every ``--queue`` on the command line, in order, each once (the shared broker options
    keep only the last: *last*, which is also the default when none is given)."""
    collect = argparse.ArgumentParser(add_help=False)
    collect.add_argument("--queue", action="append", default=[])
    given = collect.parse_known_args(argv)[0].queue
    if not given or given[-1] != last:  # not read as the real parser did: trust the parser
        return [last]
    return list(dict.fromkeys(given))


def main() -> int:
    args = parse_args()
    log = get_logger(SCRIPT, args.log_level)
    spec = queue_spec(args)
    if args.status:
        print(queue_status(broker_settings(args), spec))
        return 0
    if args.serve:
        return serve_dashboard(args, spec, log)
    if args.watch:
        state = watch(broker_settings(args), spec, until_done=args.until_done,
                      interval=args.interval)
        print(f"watched queue {spec.name!r}: {state.done} tasks done, {state.dead} dead-lettered "
              f"while watching (run {state.run_id or '-'})")
        return 0
    settings = None if args.offline else broker_settings(args)
    history = History(settings, spec, args.reports_dir)
    if settings is not None:
        moved = history.legacy.collect(settings, spec)  # what versions before 0.4 queued
        if sum(moved.values()):
            log.info("collected %d task events of older workers from %r into %s",
                     moved["task"], spec.events_name, history.legacy.path)
    if args.list:
        print(list_runs(history.all_records()))
        return 0
    run_id = args.run or history.latest_run() or ""
    records = history.run_records(run_id)
    report = RunReport(records(), run_id, spec.name)
    if not report.attempts:
        raise UserError(f"no results recorded for queue {spec.name!r}"
                        f"{' and run ' + repr(args.run) if args.run else ''}; run workers on it "
                        "first (task_report.py --list shows the runs recorded)")
    if history.retention_note:
        print(f"note: {history.retention_note}")
    print(report.table(run_attempts(records(), report.run_id) if args.tasks else None))
    svg_path = args.svg or args.reports_dir / f"{spec.name}-{run_id}.svg"
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(report.svg(), encoding="utf-8")
    print(f"\ntimeline picture: {svg_path}")
    if args.csv:
        try:
            table = write_tasks_file(args.csv, run_id, records)
        except OSError as exc:
            raise UserError(f"cannot write --csv {str(args.csv)!r} ({exc.strerror}); "
                            "give a writable path") from None
        print(f"results: {table.tasks} tasks written to {args.csv} (one row each)")
    return 0


def serve_dashboard(args: argparse.Namespace, spec, log) -> int:
    from taskqueue import web

    web.require()
    from taskqueue.web.serve import browser_wanted, serve

    specs = [replace(spec, name=name) for name in args.queues]
    return serve(broker_settings(args), specs, bind=args.bind, auth_file=args.auth_file,
                 public_url=args.public_url, reports_dir=args.reports_dir,
                 open_browser=browser_wanted(args.no_browser), interval=args.interval, log=log)


def entry() -> None:
    """The console script (``pip install``) and the top-level script both start here."""
    run_script(SCRIPT, main)
