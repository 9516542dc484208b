"""Where each page is (Tornado's routing), for one queue or several.

One queue: its pages under the prefix, as they always were (``/``, ``/runs``, ...). Several
(``--queue jobs --queue mail``): each queue's pages under ``<prefix>q/<name>/`` and, under the
prefix itself, the overview of every queue (``/``, ``/overview.json``), ``/metrics`` of all
of them, the script and style, ``/login`` and ``/healthz``. The door (door.py: the token or
login, CSRF and Origin, the headers) is the same for every address.

A queue's name is data: its addresses carry it percent-encoded (board.queue_root), and a
request's path segment is compared with the name once decoded (``UnderQueue``), so any
encoding of it (``%c3%bc``, ``'`` or ``%27``) reaches the same queue, and no name can reach
another queue's routes or make a pattern of its own (it is never in a regular expression).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote

import tornado.routing
import tornado.web
from prometheus_client.registry import CollectorRegistry

from taskqueue.web.access import Access, Public
from taskqueue.web.app import (
    HERE,
    QUEUE_ROUTES,
    SERVER_ROUTES,
    Metrics,
    NotFound,
    Static,
    ToPrefix,
    quiet_log,
)
from taskqueue.web.board import Board, overview
from taskqueue.web.door import Base


class OverviewPage(Base):
    """Every queue served, its figures filled in (and kept current) by overview.js."""

    def get(self) -> None:
        self.page("overview.html", title="queues")


class OverviewJson(Base):
    def get(self) -> None:
        self.json(overview(self.settings["boards"]))


class UnderQueue(tornado.routing.Matcher):
    """``<prefix>q/<name>/<the route's pattern>``, for the queue named *name*; with no
    *pattern*, ``<prefix>q/<name>`` alone (without its slash: ``ToQueue``)."""

    def __init__(self, head: str, name: str, pattern: str | None = None) -> None:
        self.head, self.name = head, name
        self.route = tornado.routing.PathMatches(pattern) if pattern is not None else None

    def match(self, request: Any) -> dict[str, Any] | None:
        path: str = request.path
        if not path.startswith(self.head):
            return None
        segment, slash, rest = path[len(self.head):].partition("/")
        try:
            named = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            return None  # no queue's name (an invalid %XX never stands for one)
        if named != self.name or bool(slash) != (self.route is not None):
            return None
        if self.route is None:
            return {}
        # PathMatches reads the path alone; the rest of the request does not matter to it
        return self.route.match(cast(Any, SimpleNamespace(path="/" + rest)))


class ToQueue(Base):
    """``<prefix>q/<name>`` without its slash: to the queue's live page (its root). Behind the
    door, as a 404 is: no one without the token learns which queues are served."""

    def get(self) -> None:
        assert self.queue_board is not None  # its route always names the board
        self.redirect(self.queue_board.root)


def _arguments(more: Sequence[Any], board: Board | None) -> dict[str, Any]:
    """A route's handler arguments (its own, if any) and the queue it is of."""
    return {**(more[0] if more else {}), "board": board}


def make_app(*, boards: list[Board], access: Access, registry: CollectorRegistry,
             cookie_secret: str, log: logging.Logger, hosts: set[str] | None = None,
             public: Public | None = None) -> tornado.web.Application:
    """*boards*: the queues served (one: at the root); *registry*: the server's /metrics;
    *hosts*: the Host headers accepted (None: any; with a password, behind a proxy);
    *public*: where browsers reach it (its prefix, origin, and https or not)."""
    public = public or Public()
    under = re.escape(public.prefix.rstrip("/"))
    only = boards[0] if len(boards) == 1 else None
    rules: list[Any] = [(under + pattern, handler, _arguments(more, only))
                        for pattern, handler, *more in SERVER_ROUTES]
    if only is not None:  # one queue: its pages at the prefix, as they always were
        rules += [(under + pattern, handler, _arguments(more, only))
                  for pattern, handler, *more in QUEUE_ROUTES]
    else:
        rules += [(under + r"/", OverviewPage), (under + r"/overview\.json", OverviewJson),
                  (under + r"/metrics", Metrics),
                  (under + r"/static/(.*)", Static, {"path": str(HERE / "static")})]
        head = f"{public.prefix}q/"
        rules += [tornado.routing.Rule(UnderQueue(head, board.name, pattern), handler,
                                       _arguments(more, board))
                  for board in boards for pattern, handler, *more in QUEUE_ROUTES]
        rules += [tornado.routing.Rule(UnderQueue(head, board.name), ToQueue, {"board": board})
                  for board in boards]
    if under:
        rules.append((under, ToPrefix))
    return tornado.web.Application(
        rules, template_path=str(HERE / "templates"), xsrf_cookies=True,
        default_handler_class=NotFound, default_handler_args={"board": only},
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict", "path": public.prefix,
                            "secure": public.secure},
        cookie_secret=cookie_secret, boards=boards, access=access, registry=registry,
        autoescape="xhtml_escape", log_function=quiet_log, log=log, hosts=hosts,
        public=public,
        readers=ThreadPoolExecutor(4, thread_name_prefix="page"))
