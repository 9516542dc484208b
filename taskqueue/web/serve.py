"""``task_report.py --serve``: start the dashboard, say where it is, serve until Ctrl+C.

One broker reader (feed.py) per queue for the whole server, one snapshot a second per queue
for every page (hub.py): a queue's board (board.py); the routes in routes.py and app.py. Ends
with a one-line summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import sys
import tempfile
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.errors import UserError
from taskqueue.web.access import Access, Public, check_bind, is_loopback, parse_bind
from taskqueue.web.board import Board, make_board, queue_root
from taskqueue.web.metrics import registry_of_all
from taskqueue.web.routes import make_app


@dataclass(frozen=True)
class Served:
    """What the server serves and how (the options of ``--serve``)."""

    settings: BrokerSettings
    specs: list[QueueSpec]
    reports_dir: Path
    interval: float
    log: logging.Logger


def serve(settings: BrokerSettings, specs: list[QueueSpec], *, bind: str,
          auth_file: Path | None, public_url: str | None, reports_dir: Path, open_browser: bool,
          interval: float, log: logging.Logger) -> int:
    """Serve the dashboard of *specs* (one queue, or several from one server)."""
    host, port = parse_bind(bind)
    public = Public.parse(public_url)
    access = Access.from_file(auth_file) if auth_file else Access.with_token()
    check_bind(host, access)
    served = Served(settings, specs, reports_dir, interval, log)
    return asyncio.run(_serve(served, access, public, host, port, open_browser))


def boards_of(served: Served, public: Public) -> list[Board]:
    """A board per queue: one at the prefix, or each under its own ``q/<name>/``."""
    several = len(served.specs) > 1
    return [make_board(served.settings, spec, reports_dir=served.reports_dir,
                       interval=served.interval, log=served.log,
                       root=queue_root(public.prefix, spec.name) if several else public.prefix)
            for spec in served.specs]


async def _serve(served: Served, access: Access, public: Public, host: str, port: int,
                 open_browser: bool) -> int:
    log = served.log
    boards = boards_of(served, public)
    # On loopback, only this machine's names (and the public one, as a proxy may pass it on).
    hosts = loopback_hosts(host, port) | public.host_names() if is_loopback(host) else None
    registry = boards[0].registry if len(boards) == 1 else \
        registry_of_all([board.registry for board in boards])
    app = make_app(boards=boards, access=access, registry=registry,
                   cookie_secret=secrets.token_hex(32), log=log, hosts=hosts, public=public)
    try:
        server = app.listen(port, address=host, xheaders=False)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        raise UserError(f"cannot listen on {host}:{port} ("
                        f"{'in use by another program' if busy else exc.strerror}); choose "
                        "another with --bind HOST:PORT") from None
    for board in boards:
        board.start()
    shown_host = f"[{host}]" if ":" in host else host
    address = public.url or f"http://{shown_host}:{port}/"  # the one the cookies work on
    opened = address + (f"?token={access.token}" if access.token else "")
    names = ", ".join(repr(board.name) for board in boards)
    print(f"dashboard of queue{'s' if len(boards) > 1 else ''} {names}: {opened}", flush=True)
    print("(Ctrl+C to stop)" + ("" if access.token else f"; log in as {access.user}"),
          flush=True)
    redirect = open_with_token(opened, address) if open_browser else None
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stopping.set)  # not on Windows: Ctrl+C raises
    try:
        await stopping.wait()
    finally:
        if redirect is not None:
            redirect.unlink(missing_ok=True)
        server.stop()
        for board in boards:
            board.stop()
        log.info("dashboard stopped")
    for board in boards:
        queue = f" of queue {board.name!r}" if len(boards) > 1 else ""
        print(f"dashboard stopped{queue}: {board.feed.totals.records} records read, "
              f"{board.hub.most_pages} live page(s) open at most", flush=True)
    return 0


def loopback_hosts(host: str, port: int) -> set[str]:
    """The names this machine's browser reaches a loopback server by."""
    names = {host, "localhost", "127.0.0.1", "[::1]", f"[{host}]"}
    return {f"{name}:{port}".lower() for name in names}


def open_with_token(opened: str, address: str) -> Path | None:
    """Open the dashboard in a browser without putting the token on the browser's command
    line (any local user could read it there): a page only we can read redirects to it."""
    if "?token=" not in opened:
        with contextlib.suppress(webbrowser.Error, OSError):
            webbrowser.open(address)
        return None
    handle, name = tempfile.mkstemp(prefix="taskqueue-dashboard-", suffix=".html")
    with os.fdopen(handle, "w", encoding="utf-8") as page:  # mkstemp: readable by us only
        page.write(f'<!doctype html><meta http-equiv="refresh" content="0;url={opened}">'
                   f'<a href="{opened}">open the dashboard</a>\n')
    with contextlib.suppress(webbrowser.Error, OSError):
        webbrowser.open(Path(name).as_uri())
    return Path(name)


def browser_wanted(no_browser: bool) -> bool:
    """Open a browser only for a person at a terminal with a browser to open."""
    if no_browser or not sys.stdout.isatty():
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True
