"""The door every route of the dashboard goes through (Tornado handlers' common base): the
security headers on every answer (``Secured``), who is asking and the refusal for anyone else,
the session cookie, the CSRF and Origin check, and errors as the asker reads them (``Base``).

The Origin a POST must have is the public one when ``--public-url`` gives it (access.Public),
else the ``http://Host`` the request was sent to; forwarded headers are never believed. The
session cookie is HttpOnly, SameSite=Strict, scoped to the prefix, ``Secure`` under https.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import tornado.escape
import tornado.gen
import tornado.ioloop
import tornado.web

from taskqueue.errors import UserError
from taskqueue.views.shown import html as shown
from taskqueue.views.shown import visible
from taskqueue.web.access import Access, Public, origin_of
from taskqueue.web.hub import feed_problem
from taskqueue.web.runs import RunPages

if TYPE_CHECKING:
    from taskqueue.web.board import Board

COOKIE = "taskqueue_session"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; worker-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")  # worker-src: the live page's shared stream-worker.js
FAILED_WAIT = 1.0  # seconds a wrong token, password or Basic header waits for its answer
# The bidirectional marks, embeddings, overrides and isolates: in a <title> (no <bdi> there)
# a right-to-left override in a queue's name would turn the rest of the tab's name around.
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """*text* for a page's <title>: no bidirectional controls, other controls visible."""
    return visible(BIDI_CONTROLS.sub("", str(text)))


class Secured(tornado.web.RequestHandler):
    """The security headers, on every answer: pages, errors (Tornado sets them again after
    clearing a failed answer), redirects, /healthz."""

    def initialize(self, board: Board | None = None) -> None:
        """*board*: the queue a route's page is of (None: a page of the whole server, such as
        the overview of several queues, the login or an unknown address)."""
        self.queue_board = board

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")


class Base(Secured):
    """Who is asking, the refusal for anyone else, and errors as the asker reads them."""

    missing_run: str | None = None  # set when a run's address names a run not in the record

    @property
    def access(self) -> Access:
        return self.settings["access"]

    @property
    def public(self) -> Public:
        return self.settings["public"]

    @property
    def board(self) -> Board:
        """The queue this page is of (a route of a queue's pages always has one)."""
        if self.queue_board is None:
            raise tornado.web.HTTPError(404, "no queue at %s", self.request.path[:200])
        return self.queue_board

    def get_template_namespace(self) -> dict[str, Any]:
        """``root`` for every page: the prefix its links, script and style are under (its
        queue's, with several queues); ``home``: the server's own; ``queues``: every queue
        served, (name, its root), for the header's switcher; ``shown``: a name as HTML, its
        direction kept to itself (views/shown.py); ``plain``: text for the <title>."""
        board = self.queue_board
        return {**super().get_template_namespace(),
                "root": board.root if board else self.public.prefix, "home": self.public.prefix,
                "queues": [(b.name, b.root) for b in self.settings["boards"]],
                "of_queue": board is not None, "shown": shown, "plain": plain}

    def remember(self, who: str) -> None:
        """The session cookie: HttpOnly, SameSite=Strict, scoped to the prefix, Secure under
        an https public address."""
        self.set_signed_cookie(COOKIE, who, httponly=True, samesite="Strict",
                               path=self.public.prefix, secure=self.public.secure)

    def get_current_user(self) -> str | None:
        via_header = self.access.header_ok(self.request.headers.get("Authorization"))
        if via_header:
            return via_header
        cookie = self.get_signed_cookie(COOKIE, max_age_days=7)
        return cookie.decode() if cookie else None

    async def prepare(self) -> None:
        hosts = self.settings["hosts"]
        if hosts and self.request.host.lower() not in hosts:
            # A page of another name that resolves here (DNS rebinding) is not us.
            raise tornado.web.HTTPError(403, "unknown Host %s", self.request.host[:100])
        if not self.request.path.startswith(self.public.prefix):
            # A proxy that cuts the prefix off would otherwise send the login round in circles.
            raise tornado.web.HTTPError(404, "no page at %s: the dashboard's pages are under %s "
                                        "(--public-url; the proxy passes the path on as it is)",
                                        self.request.path[:200], self.public.prefix)
        if self.current_user:
            return
        token = self.get_query_argument("token", None)
        if self.request.method == "GET" and self.access.token_ok(token):
            self.remember("token")
            self.redirect(self.request.path)  # the token leaves the address bar
            return
        if self.request.headers.get("Authorization") or token is not None:
            self.settings["log"].warning("dashboard: wrong credentials from %s for %s",
                                         self.request.remote_ip, self.request.path)
            await tornado.gen.sleep(FAILED_WAIT)  # guessing is slow, by any door
        self.refuse()

    def refuse(self) -> None:
        wants_page = "text/html" in self.request.headers.get("Accept", "")
        if self.access.login and wants_page and self.request.method == "GET":
            self.redirect(f"{self.public.prefix}login?next="
                          + tornado.escape.url_escape(self.request.uri))
            return
        self.set_status(401)
        if self.access.login and "basic" in self.request.headers.get("Authorization",
                                                                     "").lower():
            self.set_header("WWW-Authenticate", 'Basic realm="taskqueue"')  # a script's retry
        self.finish("the dashboard needs its token (open the address task_report.py --serve "
                    "printed) or a login\n" if not self.access.login else "log in first\n")

    def check_xsrf_cookie(self) -> None:
        """Tornado's token check, and the request must come from our own pages: the public
        origin when one is given, else the one the request names (``http://Host``; forwarded
        headers are not believed)."""
        super().check_xsrf_cookie()
        origin = self.request.headers.get("Origin") or self.request.headers.get("Referer")
        ours = self.public.origin or origin_of(f"{self.request.protocol}://{self.request.host}")
        if not origin or origin_of(origin) != ours:
            raise tornado.web.HTTPError(403, "cross-origin request refused")

    def write_error(self, status_code: int, **kwargs: object) -> None:
        """Errors as one JSON line for the page's script (no traceback); a 404 asked for by
        a browser's address bar is a page saying what is not there."""
        reason = self._reason
        info = kwargs.get("exc_info")  # sys.exc_info()'s triple, when an exception ended it
        error = info[1] if isinstance(info, tuple) else None
        if isinstance(error, tornado.web.HTTPError) and error.log_message:
            reason = error.log_message % error.args if error.args else error.log_message
        if status_code == 404 and "text/html" in self.request.headers.get("Accept", ""):
            board = self.queue_board
            self.page("not_found.html", title="not found", run=self.missing_run,
                      path=self.request.path, problem=feed_problem(board.feed) if board else None)
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"ok": False, "error": reason}))

    def known_run(self, run_id: str) -> str:
        """*run_id*, if the record read so far has it; else the answer is 404. A run's records
        older than the results stream keeps (its retention) are not read: it is unknown too."""
        if self.board.feed.seen(run_id) == 0:
            self.missing_run = run_id
            raise tornado.web.HTTPError(404, "no run %s in the record (never recorded here, or "
                                        "older than the results stream keeps)", run_id)
        return run_id

    def page(self, template: str, **values: object) -> None:
        board = self.queue_board
        queue = board.name if board else ", ".join(b.name for b in self.settings["boards"])
        self.render(template, queue=queue, **values)

    def json(self, value: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, ensure_ascii=False))

    @property
    def runs(self) -> RunPages:
        return self.board.runs

    async def blocking(self, function, *args):
        """Run *function* (it reads files) off the server's thread."""
        try:
            return await tornado.ioloop.IOLoop.current().run_in_executor(
                self.settings["readers"], function, *args)
        except UserError as exc:
            raise tornado.web.HTTPError(503, "%s", str(exc)) from None
