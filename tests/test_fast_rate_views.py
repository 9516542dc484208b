"""The rate limit in the live views, from made-up worker snapshots (docs/design/rate-limit.md
§5): a slot whose entry has ``rate_wait`` says it waits for the rate limit (its key, the
seconds left), the workers' top-level ``rate`` is one line (``rate limit 20/s (per key)``) in
the terminal view, its one-line form and the web page's data; a key is a stranger's text. The
tasks parked by a limit on the Queue card and the overview."""

from __future__ import annotations

import json
import logging

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.views.live import LiveState
from taskqueue.web.board import make_board, overview_row
from taskqueue.web.snapshot import live_json

NOW = 1_800_000_000.0
RATE = {"limit": "20/s", "per_key": True, "arbiter": False, "busiest": []}


def snapshot(worker: str, slots: list[dict], rate: object = None, time: float = NOW) -> dict:
    event = {"kind": "snapshot", "worker": worker, "host": "h1", "time": time,
             "state": "running", "slots": slots}
    if rate is not None:
        event["rate"] = rate
    return event


def waiting(slot: str, row: int, key: str, until: object) -> dict:
    return {"slot": slot, "state": "busy", "since": NOW - 1, "row": row, "task": "fetch.",
            "done": 0, "failed": 0, "rate_wait": {"key": key, "until": until}}


def busy(slot: str, row: int) -> dict:
    return {"slot": slot, "state": "busy", "since": NOW - 2, "row": row, "task": "resize.",
            "done": 1, "failed": 0, "progress": {"fraction": 0.5, "note": "half"}}


def state_with(*events: dict) -> LiveState:
    state = LiveState("q")
    for event in events:
        state.feed(event)
    return state


def test_a_waiting_slot_says_so_with_its_key_and_the_seconds_left():
    state = state_with(snapshot("alice", [waiting("alice/1", 12, "api.example.com", NOW + 3.2),
                                          waiting("alice/2", 13, "", NOW + 40),
                                          busy("alice/3", 14)], RATE))
    rows = {line.split()[0]: line for line in state.screen(NOW, width=200) if line}
    # The state column (cut at its width), then the key after the row's figures.
    assert "h1             waiting for the rate limit, 3 s left: row 12  " in rows["alice/1"]
    assert rows["alice/1"].endswith('0% key "api.example.com"')
    assert "waiting for the rate limit, 40 s left: row 13" in rows["alice/2"]
    assert rows["alice/2"].endswith("0%"), "no key: no key words"
    assert 'busy on row 14 "resize." for 2 s' in rows["alice/3"]
    assert rows["alice/3"].endswith("50% half")
    assert state.slot_state(state.slots["alice/1"], NOW) == (
        'waiting for the rate limit, 3 s left: row 12, key "api.example.com"')
    line = state.line(NOW)
    assert 'alice/1 waiting row 12 key "api.example.com"' in line
    assert "alice/3 busy row 14 50% half" in line


def test_a_slot_asking_with_no_answer_yet_and_a_wait_already_over():
    state = state_with(snapshot("alice", [waiting("alice/1", 1, "k", None),
                                          waiting("alice/2", 2, "k", NOW - 5)]))
    slots = state.slots
    assert state.slot_state(slots["alice/1"], NOW) == 'waiting for the rate limit: row 1, key "k"'
    assert state.slot_state(slots["alice/2"], NOW).startswith(
        "waiting for the rate limit, 0 s left"), "never a negative count"


def test_the_rate_line_in_the_terminal_view_and_its_one_line_form():
    state = state_with(snapshot("alice", [busy("alice/1", 1)], RATE),
                       snapshot("bob", [busy("bob/1", 2)], {**RATE, "arbiter": True,
                                "busiest": [["api.example.com", 12.4], ["", 3.0]]}))
    screen = state.screen(NOW, width=200)
    assert screen[2] == ('rate limit 20/s (per key), arbiter bob, busiest: "api.example.com" '
                         "12 s, (no key) 3 s"), screen[:4]
    assert " | rate limit 20/s (per key), arbiter bob" in state.line(NOW)


def test_no_rate_line_without_a_limit_and_a_worker_without_it_is_counted():
    plain = state_with(snapshot("alice", [busy("alice/1", 1)]),
                       snapshot("bob", [busy("bob/1", 2)], {}))
    assert plain.rate_line(NOW) == ""
    assert not any("rate limit" in line for line in plain.screen(NOW, width=200))
    assert "rate limit" not in plain.line(NOW)
    mixed = state_with(snapshot("alice", [busy("alice/1", 1)], {"limit": "2/s", "per_key": False,
                                                                "arbiter": True}),
                       snapshot("old", [busy("old/1", 2)]))  # an old worker: no "rate" at all
    assert mixed.rate_line(NOW) == ("rate limit 2/s, arbiter alice; 1 of 2 workers not at this "
                                    "limit")
    gone = state_with(snapshot("alice", [busy("alice/1", 1)], RATE, time=NOW - 60))
    assert gone.rate_line(NOW) == "", "a worker not heard from for long says nothing"


def test_folded_workers_count_their_waiting_slots():
    slots = [waiting(f"w{n}/1", n, "k", NOW + 2) for n in range(30)]
    slots[0] = busy("w0/1", 0)
    events = [snapshot(f"w{n}", [slot]) for n, slot in enumerate(slots)]
    events.append(snapshot("w0", [busy("w0/1", 0), waiting("w0/2", 99, "k", NOW + 2)]))
    state = state_with(*events)
    screen = "\n".join(state.screen(NOW, width=200, height=12))
    assert "1 waiting for the rate limit, 1/2 busy: row 0" in screen
    assert "1/1 waiting for the rate limit" in screen


def test_hostile_keys_stay_one_harmless_line():
    key = "evil\x1b[2J\u202eevil\nkey"
    state = state_with(snapshot("alice", [waiting("alice/1", 1, key, NOW + 1)],
                                {**RATE, "arbiter": True, "busiest": [[key, 1.0]]}))
    screen = state.screen(NOW, width=300)
    for line in screen:
        assert "\x1b" not in line and "\u202e" not in line and "\n" not in line
    text = "\n".join(screen)
    assert text.count(r'"evil\x1b[2J\u202eevil\x0akey"') == 2, text  # the slot's, the busiest
    assert r'busiest: "evil\x1b[2J\u202eevil\x0akey" 1 s' in text


def test_malformed_rate_fields_are_ignored():
    state = state_with(snapshot("alice", [
        {**busy("alice/1", 1), "rate_wait": "soon"},
        {**busy("alice/2", 2), "rate_wait": {"key": 7, "until": "later"}},
        {**busy("alice/3", 3), "rate_wait": {"until": True}}],
        {"limit": 20, "per_key": "yes", "busiest": "many"}))
    assert state.slot_state(state.slots["alice/1"], NOW).startswith("busy on row 1")
    assert state.slot_state(state.slots["alice/2"], NOW) == "waiting for the rate limit: row 2"
    assert state.slot_state(state.slots["alice/3"], NOW) == "waiting for the rate limit: row 3"
    assert state.rate_line(NOW) == ""
    other = state_with(snapshot("alice", [busy("alice/1", 1)], "20/s"))
    assert other.rate_line(NOW) == ""


def test_the_web_pages_data_has_the_waiting_slot_and_the_rate_line():
    state = state_with(snapshot("alice", [waiting("alice/1", 12, "k<b>", NOW + 3),
                                          busy("alice/2", 13)], {**RATE, "arbiter": True}))
    data = live_json(state, NOW)
    assert data["rate"] == "rate limit 20/s (per key), arbiter alice"
    slot_rows = data["workers"][0]["slot_rows"]
    assert slot_rows[0]["kind"] == "waiting" and slot_rows[0]["progress"] is None
    assert slot_rows[0]["state"] == 'waiting for the rate limit, 3 s left: row 12, key "k<b>"', \
        "text, filled in as text by the page (app.js fill)"
    assert slot_rows[1]["kind"] == "busy" and slot_rows[1]["progress"]["note"] == "half"
    assert data["workers"][0]["state"].startswith("1 waiting for the rate limit, 1/2 busy")
    json.dumps(data)  # sent as it is
    assert live_json(state_with(snapshot("bob", [busy("bob/1", 1)])), NOW)["rate"] is None


def test_the_queue_card_and_the_overview_count_the_parked_tasks(tmp_path):
    """As status does (control/commands.py ``parked``): the tasks in the rate limit's tiers,
    as the feed read them (views/live_parked.py), on the live page's Queue card and the overview's
    line, shown while some are parked or while the workers apply a limit."""
    board = make_board(BrokerSettings(["amqp://guest:guest@127.0.0.1:1/%2F"]), QueueSpec("q"),
                       reports_dir=tmp_path, interval=1.0, log=logging.getLogger("test"),
                       root="/")
    state = board.feed.state
    board.feed.heard_at = NOW
    for parked, snapshots, shown in ((None, [], False), (0, [], False), (3, [], True),
                                     (0, [snapshot("alice", [busy("alice/1", 1)], RATE)], True),
                                     (None, [snapshot("bob", [busy("bob/1", 1)], RATE)], True)):
        state.parked = parked
        for event in snapshots:
            state.feed(event)
        card = live_json(state, NOW)["queue"]
        line = overview_row(board, NOW)
        assert (card["parked"], card["parked_shown"]) == (parked, shown), (parked, snapshots)
        assert (line["parked"], line["parked_shown"]) == (parked, shown), (parked, snapshots)
        json.dumps(line)
