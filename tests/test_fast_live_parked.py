"""The tasks a rate limit parked (in ``<queue>.wait.<N>s``, views/live_parked.py) in the
terminal live view and in /metrics, from made-up states (no broker): the terminal's line
``parked (rate limit): N`` is shown as the web page's Queue card shows the count (some parked,
or a limit in force; "?" for a count the broker refused), in the screen and its one-line form,
and only when the tiers are read for that view; /metrics has ``taskqueue_parked_tasks{queue}``
whenever the count is known, 0 included."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.views.live import LiveState
from taskqueue.web.board import make_board
from taskqueue.web.metrics import registry_of, registry_of_all
from taskqueue.web.snapshot import live_json
from tests.test_fast_rate_views import NOW, RATE, busy, snapshot

pytestmark = pytest.mark.fast

LINE = "parked (rate limit): "


def state_of(parked: int | None, limited: bool, read: bool = True) -> LiveState:
    state = LiveState("q")
    state.parked, state.parked_read = parked, read
    state.feed(snapshot("alice", [busy("alice/1", 1)], RATE if limited else None))
    return state


@pytest.mark.parametrize(("parked", "limited", "shown"), [
    (None, False, None), (0, False, None), (3, False, "3"), (0, True, "0"),
    (12, True, "12"), (None, True, "?")])
def test_the_terminal_shows_the_parked_count_as_the_web_card_does(parked, limited, shown):
    state = state_of(parked, limited)
    screen = state.screen(NOW, width=120)
    line = state.line(NOW)
    card = live_json(state, NOW)["queue"]
    assert card["parked_shown"] == (shown is not None), "the same rule as the web card"
    if shown is None:
        assert not any(LINE in text for text in screen) and LINE not in line
        return
    assert screen[1] == f"{LINE}{shown}", "a line of its own, under the queue's"
    assert f" | {LINE}{shown} | " in line


def test_a_view_that_does_not_read_the_tiers_shows_no_parked_line():
    """Nothing read is not "?": a view whose tiers nobody counts says nothing of them."""
    state = state_of(None, limited=True, read=False)
    assert not any(LINE in text for text in state.screen(NOW, width=120))
    assert LINE not in state.line(NOW)


def test_the_screen_keeps_its_height_with_the_parked_line():
    state = state_of(5, limited=True)
    for height in (8, 12, 30):
        assert len(state.screen(NOW, width=100, height=height)) <= height


def parked_samples(text: str) -> dict[str, float]:
    return {sample.labels["queue"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "taskqueue_parked_tasks"}


def test_metrics_have_the_parked_gauge_once_the_count_is_known(tmp_path):
    boards = [make_board(BrokerSettings(["amqp://guest:guest@127.0.0.1:1/%2F"]),
                         QueueSpec(name), reports_dir=tmp_path / name, interval=1.0,
                         log=logging.getLogger("test"), root=f"/q/{name}/")
              for name in ("a", "b")]
    a, b = (board.feed.state for board in boards)
    one = registry_of(boards[0].feed)
    assert parked_samples(generate_latest(one).decode()) == {}, "not read yet: no series"
    a.parked = 0
    assert parked_samples(generate_latest(one).decode()) == {"a": 0.0}, "none parked: 0"
    a.parked, b.parked = 7, 2
    together = registry_of_all([registry_of(board.feed) for board in boards])
    text = generate_latest(together).decode()
    assert parked_samples(text) == {"a": 7.0, "b": 2.0}
    assert text.count("# TYPE taskqueue_parked_tasks gauge") == 1, "one family, both queues"
    b.parked = None  # a tier the broker refused to count: unknown, not 0
    assert parked_samples(generate_latest(together).decode()) == {"a": 7.0}
