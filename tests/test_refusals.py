"""A refused login or vhost while a node boots or stops is not final (issue 24): pika cannot
tell it from a wrong password, so the session retries, and only a refusal that persists ends a
first connection; a session that was connected before is never ended by one. Pure logic on
the session's error path (the restart storm itself: tests/test_faults.py)."""

from __future__ import annotations

import logging

import pika

from taskqueue.broker import connection as conn
from taskqueue.broker.config import BrokerSettings


class Recording(conn.BrokerSession):
    def __init__(self) -> None:
        super().__init__(BrokerSettings(["amqp://guest:guest@127.0.0.1:5672/%2F"],
                                        connect_timeout=60), logging.getLogger("test"))
        self.retries: list[str] = []
        self._deadline = 1e18

    def _retry_later(self, why: str) -> None:  # the loop is not running: just note it
        self.retries.append(why)


REFUSED = pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED")


def test_a_refusal_on_a_reconnect_is_retried_however_long(monkeypatch):
    session = Recording()
    session.connections_made = 1  # it was at work before
    clock = [1000.0]
    monkeypatch.setattr(conn.time, "monotonic", lambda: clock[0])
    for _ in range(5):
        session._on_open_error(None, REFUSED)
        clock[0] += 30
    assert session.error is None and len(session.retries) == 5
    assert "refused the login" in session.retries[0] and "trying again" in session.retries[0]


def test_a_first_refusal_is_final_only_once_it_persists(monkeypatch):
    session = Recording()
    clock = [1000.0]
    monkeypatch.setattr(conn.time, "monotonic", lambda: clock[0])
    session._on_open_error(None, REFUSED)
    clock[0] += conn.REFUSAL_PERSISTS_SECONDS / 2
    session._on_open_error(None, REFUSED)
    assert session.error is None and len(session.retries) == 2, "still worth retrying"
    clock[0] += conn.REFUSAL_PERSISTS_SECONDS
    session._on_open_error(None, REFUSED)
    assert session.error is not None and "refused the login of user 'guest'" in str(
        session.error), "a wrong password still ends in one clear line"
    assert session.error.exit_code == 4
