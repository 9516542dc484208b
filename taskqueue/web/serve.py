"""``task_report.py --serve``: start the dashboard, say where it is, serve until Ctrl+C.

One broker reader (feed.py) for the whole server, one snapshot a second for every page
(hub.py), the routes in app.py. Ends with a one-line summary.
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
from pathlib import Path

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.errors import UserError
from taskqueue.web.access import Access, Public, check_bind, is_loopback, parse_bind
from taskqueue.web.actions import ControlDesk
from taskqueue.web.app import make_app
from taskqueue.web.copies import RunCopies
from taskqueue.web.feed import DashboardFeed
from taskqueue.web.hub import Hub
from taskqueue.web.metrics import registry_of
from taskqueue.web.runs import RunPages


def serve(settings: BrokerSettings, spec: QueueSpec, *, bind: str, auth_file: Path | None,
          public_url: str | None, reports_dir: Path, open_browser: bool, interval: float,
          log: logging.Logger) -> int:
    host, port = parse_bind(bind)
    public = Public.parse(public_url)
    access = Access.from_file(auth_file) if auth_file else Access.with_token()
    check_bind(host, access)
    copies = RunCopies(reports_dir, spec.name)
    feed = DashboardFeed(settings, spec, log, copies, interval)
    desk = ControlDesk(settings, spec, log)
    return asyncio.run(_serve(feed, desk, access, public, host, port, open_browser, log))


async def _serve(feed: DashboardFeed, desk: ControlDesk, access: Access, public: Public,
                 host: str, port: int, open_browser: bool, log: logging.Logger) -> int:
    hub = Hub(feed, feed.interval)
    runs = RunPages(feed.copies, feed.spec.name, feed.seen, feed.latest_run)
    # On loopback, only this machine's names (and the public one, as a proxy may pass it on).
    hosts = loopback_hosts(host, port) | public.host_names() if is_loopback(host) else None
    app = make_app(feed=feed, hub=hub, runs=runs, desk=desk, access=access,
                   registry=registry_of(feed, lambda: hub.pages),
                   cookie_secret=secrets.token_hex(32), log=log, hosts=hosts, public=public)
    try:
        server = app.listen(port, address=host, xheaders=False)
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        raise UserError(f"cannot listen on {host}:{port} ("
                        f"{'in use by another program' if busy else exc.strerror}); choose "
                        "another with --bind HOST:PORT") from None
    feed.start()
    hub.start()
    shown_host = f"[{host}]" if ":" in host else host
    address = public.url or f"http://{shown_host}:{port}/"  # the one the cookies work on
    opened = address + (f"?token={access.token}" if access.token else "")
    print(f"dashboard of queue {feed.spec.name!r}: {opened}", flush=True)
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
        hub.stop()
        server.stop()
        feed.stop()
        log.info("dashboard stopped")
    print(f"dashboard stopped: {feed.totals.records} records read, {hub.most_pages} live "
          f"page(s) open at most", flush=True)
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
