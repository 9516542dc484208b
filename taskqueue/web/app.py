"""The dashboard's pages (Tornado handlers). Every route but /healthz needs the token or the
login. A queue's (each under ``/q/<name>/`` when several are served: routes.py):

  GET  /                      the live page (pushed to by /stream, Server-Sent Events)
  GET  /live.json             what the live page shows, once
  GET  /runs, /runs/ID        the runs recorded; one run: table, timeline, attempts
  GET  /runs/ID/tasks.json    a page of its tasks (?outcome=&q=&page=&sort=&desc=1)
  GET  /runs/ID/task.json     one task's attempts (?row=N or ?id=MESSAGE_ID)
  GET  /runs/ID/tasks/N       a task's own page (tasks/id/MESSAGE_ID: one without a row)
  GET  /runs/ID/timeline.svg  /runs/ID/tasks.csv
  GET  /dead                  dead tasks by reason (?run=ID), from the record; every dead
                              task of one reason (&reason=SHAPE&page=N)
  GET  /history, /history.svg  done and failed per minute, the queue's depth (history.py)
  GET  /control/preview.json  what an action would touch, and its one-time ticket
  POST /control               do it (CSRF token + same origin; GET is 405)
  GET  /metrics               Prometheus text format
The server's: /healthz, /login and POST /login (with --auth-file only); with several queues
/ (the overview), /overview.json, /metrics (every queue's) and the script and style.
  anything else, or a run the record does not have: 404 (a page for a browser, else JSON)

Safe by default: a CSP with no inline script (``frame-ancestors 'none'``), no CORS header,
HttpOnly SameSite=Strict cookies, POST-only control with Tornado's XSRF check and an Origin
check; the headers on every answer (``Secured``: errors and /healthz too); all of it in
door.py. Page text from tasks is data: templates escape it, the script sets ``textContent``.

Behind a proxy (``--public-url``, access.Public) every route above is under its prefix
(``/taskqueue/runs``), the pages and the script build their addresses from it (``root``), the
only Origin accepted is the public one, and the cookies are scoped to the prefix (``Secure``
under https).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tornado.gen
import tornado.ioloop
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.iostream import StreamClosedError

from taskqueue.errors import UserError
from taskqueue.web.door import FAILED_WAIT, Base, Secured
from taskqueue.web.history import HISTORY_ROUTES
from taskqueue.web.hub import Hub
from taskqueue.web.runs import PAGE_SIZE, task_path

if TYPE_CHECKING:
    from taskqueue.web.board import Board

HERE = Path(__file__).parent
RUN_ID = r"([A-Za-z0-9_.:-]{1,100})"


class Health(Secured):
    """Open to everyone (a load balancer's probe), with the headers all the same."""

    def get(self) -> None:
        self.finish("ok\n")


class LivePage(Base):
    def get(self) -> None:
        self.page("live.html", title="live")


class LiveJson(Base):
    def get(self) -> None:
        self.json(json.loads(self.board.hub.latest()[1]))


class Stream(Base):
    """Server-Sent Events: the hub's snapshot at the server's rate; the client sets nothing."""

    async def get(self) -> None:
        hub: Hub = self.board.hub
        if not hub.join():
            raise tornado.web.HTTPError(503, "too many live pages open")
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")  # nginx passes each event on as it comes
        try:
            self.write(f"retry: {int(hub.interval * 2000)}\n\n")
            version = -1
            while True:
                version, data = await hub.after(version)
                self.write(f"data: {data}\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            hub.leave()


class RunsPage(Base):
    def get(self) -> None:
        feed = self.board.feed
        with feed.lock:
            runs = feed.totals.run_list()
        self.page("runs.html", title="runs", runs=runs, when=_when)


class RunPage(Base):
    def get(self, run_id: str) -> None:
        self.page("run.html", title=f"run {run_id}", run_id=self.known_run(run_id))


class RunTasks(Base):
    async def get(self, run_id: str) -> None:
        page = max(1, _int(self.get_query_argument("page", "1"), 1))
        self.json(await self.blocking(self.runs.page, self.known_run(run_id),
                                      self.get_query_argument("outcome", ""),
                                      self.get_query_argument("q", "")[:200], page, PAGE_SIZE,
                                      self.get_query_argument("sort", ""),
                                      self.get_query_argument("desc", "") == "1"))


class RunTask(Base):
    async def get(self, run_id: str) -> None:
        row = self.get_query_argument("row", None)
        row_number = _int(row, None) if row is not None else None
        self.json(await self.blocking(self.runs.attempts, self.known_run(run_id), row_number,
                                      self.get_query_argument("id", "")))


class TaskPage(Base):
    """A task's own page: the shell here, its attempts from task.json (task.js)."""

    async def get(self, run_id: str, row: str | None = None,
                  message_id: str | None = None) -> None:
        run_id = self.known_run(run_id)
        number = _int(row, None) if row is not None else None
        attempts = await self.blocking(self.runs.attempts, run_id, number, message_id or "")
        if not attempts:
            raise tornado.web.HTTPError(404, "run %s has no such task", run_id)
        self.page("task.html", title=f"task {row or message_id} of run {run_id}", run_id=run_id,
                  row="" if number is None else str(number), message_id=message_id or "",
                  task=attempts[-1].get("task") or "")


class RunTimeline(Base):
    async def get(self, run_id: str) -> None:
        svg = await self.blocking(self.runs.svg, self.known_run(run_id))
        self.set_header("Content-Type", "image/svg+xml")
        self.finish(svg)


class RunCsv(Base):
    async def get(self, run_id: str) -> None:
        text = await self.blocking(self.runs.csv_text, self.known_run(run_id))
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{run_id}.csv"')
        self.finish(text)


class DeadPage(Base):
    async def get(self) -> None:
        asked = self.get_query_argument("run", "")
        run_id = self.known_run(asked) if asked else await self.blocking(self.runs.latest)
        shape = self.get_query_argument("reason", "")[:200]
        page = max(1, _int(self.get_query_argument("page", "1"), 1))
        dead = await self.blocking(self.runs.dead, run_id)
        of_reason = await self.blocking(self.runs.dead_of_reason, run_id, shape, page) \
            if shape else None
        feed = self.board.feed
        self.page("dead.html", title="dead tasks", dead=dead, in_queue=feed.state.counts.dead,
                  of_reason=of_reason, task_path=task_path)


class ControlPreview(Base):
    async def get(self) -> None:
        action = self.get_query_argument("action", "")
        run = self.get_query_argument("run", "") or None
        worker = self.get_query_argument("worker", "") or None
        reason = self.get_query_argument("reason", "") or None
        message_id = self.get_query_argument("id", "")[:600] or None
        count = 1 if message_id else await self.blocking(self._count, action, run, worker,
                                                         reason)
        try:
            self.json(self.board.desk.preview(action, count, run=run, worker=worker,
                                                    reason=reason, message_id=message_id))
        except UserError as exc:
            raise tornado.web.HTTPError(400, "%s", str(exc)) from None

    def _count(self, action: str, run: str | None, worker: str | None,
               reason: str | None) -> int:
        feed = self.board.feed
        now = time.time()
        with feed.lock:
            state = feed.state
            workers = {s.worker for s in state.slots.values() if state.active(s, now)}
            left = (state.total or 0) - state.done - state.dead - state.cancelled \
                if run == state.run_id else None
            in_dead = state.counts.dead or 0
        if action in ("requeue-dead", "discard-dead"):
            if not run and not reason:
                return in_dead
            return self.runs.dead_matching(run or self.runs.latest(), reason or "")
        if action == "cancel":
            return max(0, left) if left is not None else self.runs.page(run or "")["counts"][
                "failed"]
        return 1 if worker else len(workers)


class Control(Base):
    async def post(self) -> None:
        who = f"{self.current_user} from {self.request.remote_ip}"
        ticket = self.get_body_argument("ticket", "")
        # The queue's buttons have threads of their own (board.py): a slow page read, or a
        # long requeue on another queue, never holds up a Pause.
        self.json(await tornado.ioloop.IOLoop.current().run_in_executor(
            self.board.controls, self.board.desk.perform, ticket, who))


class Metrics(Base):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        board = self.queue_board  # the server's own /metrics: every queue's
        self.finish(generate_latest(board.registry if board else self.settings["registry"]))


class NotFound(Base):
    """An address no route serves: 404, behind the same door as every page."""

    def get(self) -> None:
        raise tornado.web.HTTPError(404, "no page at %s", self.request.path[:200])


class Login(Base):
    async def prepare(self) -> None:  # the one page open to everyone (with --auth-file)
        if not self.access.login:
            raise tornado.web.HTTPError(404)

    def get(self) -> None:
        self.page("login.html", title="log in", failed=False,
                  next=self.get_query_argument("next", self.public.prefix))

    async def post(self) -> None:
        user = self.get_body_argument("user", "")
        if not self.access.password_ok(user, self.get_body_argument("password", "")):
            self.settings["log"].warning("dashboard: failed login from %s",
                                         self.request.remote_ip)
            await tornado.gen.sleep(FAILED_WAIT)  # guessing is slow
            self.set_status(403)
            self.page("login.html", title="log in", failed=True, next=self.public.prefix)
            return
        self.remember(user)
        self.redirect(local_path(self.get_body_argument("next", ""), self.public.prefix))


class Static(Base, tornado.web.StaticFileHandler):
    """The page's script and style, behind the same door as the rest."""

    def initialize(self, path: str, board: Board | None = None) -> None:  # type: ignore[override]
        tornado.web.StaticFileHandler.initialize(self, path)
        self.queue_board = board


class ToPrefix(Secured):
    """``/taskqueue`` without its slash: to the live page under the prefix."""

    def get(self) -> None:
        self.redirect(self.settings["public"].prefix)


# A queue's routes (pattern, handler[, its arguments]), under its root (routes.py).
QUEUE_ROUTES: list[tuple[Any, ...]] = [
    (r"/", LivePage), (r"/live\.json", LiveJson), (r"/stream", Stream),
    (r"/runs", RunsPage), (rf"/runs/{RUN_ID}", RunPage),
    (rf"/runs/{RUN_ID}/tasks\.json", RunTasks), (rf"/runs/{RUN_ID}/task\.json", RunTask),
    (rf"/runs/{RUN_ID}/tasks/(\d{{1,18}})", TaskPage),
    (rf"/runs/{RUN_ID}/tasks/id/()([^/]{{1,600}})", TaskPage),
    (rf"/runs/{RUN_ID}/timeline\.svg", RunTimeline), (rf"/runs/{RUN_ID}/tasks\.csv", RunCsv),
    (r"/dead", DeadPage), (r"/control/preview\.json", ControlPreview), (r"/control", Control),
    (r"/metrics", Metrics), (r"/static/(.*)", Static, {"path": str(HERE / "static")}),
    *HISTORY_ROUTES,
]
# The server's own, under the prefix (with one queue, beside the queue's).
SERVER_ROUTES: list[tuple[Any, ...]] = [(r"/healthz", Health), (r"/login", Login)]


def local_path(target: str, root: str = "/") -> str:
    """*target* if it is a path of ours (under *root*, the prefix), else *root* (no open
    redirect: not //host, /\\host, a scheme, or control characters)."""
    parts = urlsplit(target)
    if (not target.startswith(root) or parts.scheme or parts.netloc or "\\" in target
            or target.startswith("//") or any(ord(c) < 32 for c in target)):
        return root
    return target


def quiet_log(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, without the query string (it may carry the token)."""
    status = handler.get_status()
    if status >= 400:
        logging.getLogger("tornado.access").warning(
            "%d %s %s", status, handler.request.method, handler.request.path)


def _int(text: str | None, default):
    try:
        return int(text or "")
    except ValueError:
        return default


def _when(moment: float | None) -> str:
    return "-" if not moment else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))
