"""The rate limit's pure parts (taskqueue/control/ratelimit.py): rates in text, the control
record, the arbiter's scheduler on a fake clock, tiers, and the asks' and answers' JSON."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
from collections import deque
from dataclasses import dataclass

import pytest

from taskqueue.control.ratelimit import (
    FORGET,
    HOLD,
    IDLE,
    TAU,
    TIERS,
    Answer,
    RateLimit,
    Scheduler,
    decode_answer,
    decode_ask,
    encode_answer,
    encode_ask,
    format_rate,
    parse_rate,
    record_fields,
    sound_record,
    tier_for,
)
from taskqueue.control.state import ControlState, command, decode
from taskqueue.emitter.tasks import task_key

# --- rates in text ---------------------------------------------------------------------


@pytest.mark.parametrize(("text", "per_second"), [
    ("10/s", 10.0), ("100/min", 100 / 60), ("100/m", 100 / 60), ("5000/h", 5000 / 3600),
    ("2.5/s", 2.5), (" 20 / S ", 20.0), ("5000/s", 5000.0), (".5/s", 0.5), ("1/hour", 1 / 3600),
])
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "20", "/s", "20/d", "0/s", "0.0/min", "5001/s", "-1/s",
                                  "1e3/s", "nan/s", "inf/s", "20/s/s", "twenty/s", "2,5/s"])
def test_parse_rate_refuses_with_one_line(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(text)
    assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize(("per_second", "text"), [
    (20.0, "20/s"), (0.5, "30/min"), (100 / 60, "100/min"), (5000 / 3600, "5000/h"),
    (2.5, "2.5/s"), (1 / 3600, "1/h"), (5000.0, "5000/s"),
])
def test_format_rate(per_second: float, text: str) -> None:
    assert format_rate(per_second) == text
    assert parse_rate(text) == pytest.approx(per_second)


# --- the control record ----------------------------------------------------------------


def test_rate_limit_of_a_record() -> None:
    record = {"command": "rate-limit", "per_second": 20.0, "text": "20/s", "per_key": True,
              "id": "abc", "by": "bob@h1"}
    limit = RateLimit.of(record)
    assert limit == RateLimit(20.0, True, "20/s", "bob@h1", "abc")
    assert limit is not None and limit.describe() == "20/s per key (by bob@h1)"
    assert RateLimit.of({**record, "text": None}) == RateLimit(20.0, True, "20/s", "bob@h1",
                                                               "abc")
    assert {**record, **record_fields(limit)} == record


def test_off_and_malformed_records() -> None:
    off = {"command": "rate-limit", **record_fields(None)}
    assert sound_record(off) and RateLimit.of(off) is None
    for bad in ({"per_second": 0}, {"per_second": -3}, {"per_second": "20"},
                {"per_second": math.inf}, {"per_second": True}, {"per_second": 1e9},
                {"per_key": "yes"}, {"command": "pause"}):
        record = {"command": "rate-limit", "per_second": 2.0, **bad}
        assert not sound_record(record) and RateLimit.of(record) is None, bad


# --- the scheduler ---------------------------------------------------------------------


def firm_times(scheduler: Scheduler, key: str, now: float, count: int) -> list[float]:
    """The start times of *count* asks all made at *now* that got firm tickets."""
    answers = [scheduler.ask(key, now) for _ in range(count)]
    return [now + answer.wait for answer in answers if answer.firm]


def test_spacing_is_one_over_the_rate_after_the_tau_burst() -> None:
    scheduler = Scheduler(10.0)
    starts = firm_times(scheduler, "", 100.0, 50)
    burst = 1 + math.floor(TAU * 10)  # a key idle long enough starts TAU's worth at once
    assert starts[:burst] == [100.0] * burst and starts[burst] > 100.0
    gaps = [b - a for a, b in itertools.pairwise(starts[burst:])]
    assert gaps == pytest.approx([0.1] * len(gaps))
    assert max(starts) <= 100.0 + HOLD + 1e-9  # firm is never further ahead than HOLD


def test_firm_soft_boundary_at_hold() -> None:
    scheduler = Scheduler(2.0)
    answers = [scheduler.ask("k", 0.0) for _ in range(8)]
    firm = [answer for answer in answers if answer.firm]
    # t runs from -TAU by 0.5 s: firm while t <= HOLD.
    assert len(firm) == math.floor((HOLD + TAU) * 2) + 1
    soft = [answer for answer in answers if not answer.firm]
    assert soft[0].wait > HOLD
    assert [b.wait - a.wait for a, b in itertools.pairwise(soft)] == pytest.approx(
        [0.5] * (len(soft) - 1))


def test_a_steady_rate_below_the_limit_is_always_firm_at_once() -> None:
    scheduler = Scheduler(10.0)
    answers = [scheduler.ask("k", n * 0.2) for n in range(100)]
    assert all(answer.firm and answer.wait == 0 for answer in answers)


def test_keys_are_independent() -> None:
    scheduler = Scheduler(1.0)
    for _ in range(10):
        scheduler.ask("hot", 0.0)
    assert scheduler.ask("cold", 0.0) == Answer(True, 0.0)
    assert not scheduler.ask("hot", 0.0).firm
    assert [key for key, _ in scheduler.busiest(0.0)] == ["hot", "cold"]


def test_returners_keep_their_place_and_newcomers_do_not_overtake() -> None:
    scheduler = Scheduler(1.0)
    while scheduler.ask("k", 0.0).firm:
        pass  # the firm tickets of the first HOLD; the one that failed has a reservation
    reserved = [scheduler.ask("k", 0.0).wait for _ in range(5)]
    # A returner too early is told to wait again without losing its place: the queue's end
    # (the next newcomer's turn) does not move.
    early = scheduler.ask("k", 0.5, returner=True)
    assert not early.firm and early.wait > HOLD / 2
    # A newcomer is behind every reservation, even when a firm slot is near (the next slot is
    # 1.75 s ahead: a returner asking now gets it).
    late = scheduler.ask("k", 1.0)
    assert not late.firm and late.wait + 1.0 > reserved[-1]
    assert scheduler.ask("k", 1.0, returner=True) == Answer(True, 1.75)
    assert scheduler.ask("k", 1.0).wait == pytest.approx(late.wait + 1.0)


def test_returners_get_firm_tickets_in_their_turn() -> None:
    scheduler = Scheduler(2.0)
    while scheduler.ask("k", 0.0).firm:
        pass
    turns = [0.0 + scheduler.ask("k", 0.0).wait for _ in range(20)]
    for turn in turns:  # each comes back HOLD/2 before its turn, as the worker times it
        now = turn - HOLD / 2
        newcomer = scheduler.ask("k", now)
        answer = scheduler.ask("k", now, returner=True)
        assert answer.firm and now + answer.wait == pytest.approx(turn, abs=0.5 + 1e-9)
        assert not newcomer.firm


def test_no_starvation_under_a_stream_of_newcomers() -> None:
    scheduler = Scheduler(4.0)
    clock = 0.0
    for _ in range(40):
        scheduler.ask("k", clock)  # a flood that keeps the key saturated
    waiting = scheduler.ask("k", clock)
    assert not waiting.firm
    until, asks = clock + waiting.wait - HOLD / 2, 0
    while clock < 200:
        clock += 0.05
        scheduler.ask("k", clock)  # newcomers never stop
        if clock >= until:
            asks += 1
            answer = scheduler.ask("k", clock, returner=True)
            if answer.firm:
                break
            until = clock + answer.wait
    assert clock < 200 and asks <= 3


def test_reservations_nobody_claims_are_dropped_after_idle() -> None:
    scheduler = Scheduler(1.0)
    for _ in range(50):
        scheduler.ask("k", 0.0)  # 3 firm tickets up to 1.75; the rest parked, never back
    # The first reservation (2.75) is not yet IDLE overdue: a newcomer still queues behind.
    assert not scheduler.ask("k", 2.75 + IDLE - 0.1).firm
    assert scheduler.ask("k", 2.75 + IDLE + 0.1) == Answer(True, 0.0)


def test_idle_keys_are_forgotten() -> None:
    scheduler = Scheduler(1.0)
    for key in ("a", "b"):
        for _ in range(5):
            scheduler.ask(key, 0.0)
    assert len(scheduler) == 2
    scheduler.ask("b", FORGET)
    assert len(scheduler) == 2  # a's last turn is not yet FORGET in the past
    scheduler.ask("c", 20 + FORGET)
    assert len(scheduler) == 2  # a forgotten, b not yet
    assert scheduler.busiest(20 + FORGET) == [("c", 1.0 - TAU)]
    scheduler.ask("c", 200 + FORGET)
    assert len(scheduler) == 1


def test_quiet_start_gives_no_ticket_before_hold_and_tau() -> None:
    """R1: a new arbiter's tickets never overlap the ones its predecessor may have given."""
    scheduler = Scheduler(20.0)
    scheduler.ask("k", 0.0)
    scheduler.quiet_start(10.0)
    assert len(scheduler) == 0
    first = scheduler.ask("k", 10.0)
    assert not first.firm and first.wait == pytest.approx(HOLD + TAU)
    starts = firm_times(scheduler, "other", 10.0 + TAU, 200)
    assert min(starts) == pytest.approx(10.0 + HOLD + TAU)
    # no burst after the quiet time: the spacing holds from its first ticket
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(starts))


def test_rate_change_applies_to_the_next_ticket_and_respaces_reservations() -> None:
    scheduler = Scheduler(10.0)
    for _ in range(40):
        scheduler.ask("k", 0.0)
    end = scheduler.ask("k", 0.0).wait  # 41 tickets and reservations so far
    scheduler.set_rate(1.0)
    assert scheduler.interval == 1.0
    respaced = scheduler.ask("k", 0.0).wait
    assert respaced > end * 5
    scheduler.set_rate(10.0)
    assert scheduler.ask("k", 0.0).wait < respaced
    fresh = Scheduler(1.0)
    fresh.ask("x", 0.0)
    fresh.set_rate(100.0)
    assert fresh.ask("x", 0.0).wait <= 1.0 + 1e-9  # the next ticket: 1 s after the last


# --- R2 under tier latency: a simulation of workers parking a backlog --------------------


@dataclass
class Task:
    number: int
    key: str
    first_ask: float | None = None
    left: float = 0.0  # seconds still to wait after the tier it is in (R3's x-rate-left)
    parks: int = 0
    started: float | None = None
    longest: float = 0.0  # the longest soft wait it was given
    turn: float | None = None  # when its first answer said its turn was
    late: float = 0.0  # how late its tiers brought it back, in all
    bounces: int = 0  # soft answers it got as a returner


def simulate(keys: int, per_key: int, rate: float, slots: int, seed: int,
             jitter: float) -> list[Task]:
    """Per-key mode: *slots* free slots take tasks from the main queue; each asks (a returner
    once parked), waits a firm ticket in its slot, or parks: left = wait - HOLD/2, hops down
    the tiers (each late by 0-*jitter* s) back to the main queue, asks once left <= 0."""
    rng = random.Random(seed)
    scheduler = Scheduler(rate)
    tasks = [Task(n, f"key{n % keys}") for n in range(keys * per_key)]
    queue: deque[Task] = deque(tasks)
    events: list[tuple[float, int, str, Task | None]] = []
    order = itertools.count()
    free = slots

    def later(when: float, what: str, task: Task | None = None) -> None:
        heapq.heappush(events, (when, next(order), what, task))

    def park(task: Task, now: float) -> None:
        tier = tier_for(task.left)
        task.left -= tier
        task.parks += 1
        late = rng.uniform(0.0, jitter)
        task.late += late
        later(now + tier + late, "back", task)

    def take(now: float) -> None:
        nonlocal free
        while free and queue:
            task = queue.popleft()
            if task.left > 0:  # a hop: no ask
                park(task, now)
                continue
            task.first_ask = now if task.first_ask is None else task.first_ask
            answer = scheduler.ask(task.key, now, returner=task.parks > 0)
            task.turn = now + answer.wait if task.turn is None else task.turn
            task.bounces += task.parks > 0 and not answer.firm
            if answer.firm:
                free -= 1
                later(now + answer.wait, "start", task)
            else:
                task.longest = max(task.longest, answer.wait)
                task.left = answer.wait - HOLD / 2
                park(task, now)

    take(0.0)
    while events:
        now, _, what, task = heapq.heappop(events)
        assert task is not None
        if what == "start":
            task.started = now
            later(now + 0.05, "done", task)
        elif what == "done":
            free += 1
        else:
            queue.append(task)
        take(now)
    return tasks


@pytest.mark.parametrize(("jitter", "extra_parks"), [(0.0, 0), (1.0, 0), (1.5, 2)])
def test_r2_parks_are_bounded_and_only_lateness_reorders(jitter: float,
                                                         extra_parks: int) -> None:
    """3 keys x 200 tasks at 2/s each, 40 slots: nearly all are parked at once. Each parks at
    most ceil(log4 wait) x 3 + 2 times (+2 when tiers are up to 1.5 s late per hop: a late
    returner takes the slot due then, pushing those on time to ask once more). A task starts
    after one whose turn came later only if it came back late by about that much: returners
    keep their places (without jitter the start order is the first-ask order exactly)."""
    rate = 2.0
    tasks = simulate(keys=3, per_key=200, rate=rate, slots=40, seed=31, jitter=jitter)
    assert all(task.started is not None for task in tasks)
    assert sum(task.parks > 0 for task in tasks) > 500
    for task in tasks:
        levels = math.ceil(math.log(max(task.longest, 4.0), 4))
        assert task.parks <= levels * 3 + 2 + extra_parks, task
    for key in {task.key for task in tasks}:
        mine = sorted((task for task in tasks if task.key == key),
                      key=lambda task: task.started or 0.0)
        for n, overtaken in enumerate(mine):
            for ahead in mine[:n]:
                assert overtaken.turn is not None and ahead.turn is not None
                if ahead.turn > overtaken.turn:
                    assert overtaken.late >= ahead.turn - overtaken.turn - HOLD, (ahead,
                                                                                 overtaken)
        if jitter == 0:
            assert [task.first_ask for task in mine] == sorted(
                task.first_ask or 0.0 for task in mine)
        starts = [task.started or 0.0 for task in mine]
        # the limit holds per key: no 1-s window with more than the rate and TAU's burst
        assert max(sum(1 for s in starts if a <= s < a + 1) for a in starts) <= rate + 1


# --- tiers, asks and answers -----------------------------------------------------------


@pytest.mark.parametrize(("left", "tier"), [
    (0.2, 1), (1.0, 1), (3.9, 1), (4.0, 4), (63.0, 16), (100.0, 64), (1e9, 16384), (-5.0, 1),
])
def test_tier_for(left: float, tier: int) -> None:
    assert tier_for(left) == tier and tier in TIERS


def test_ask_round_trip_and_garbage() -> None:
    body = encode_ask("api.example.com", True, "id1", "alice/2")
    assert decode_ask(body) == {"key": "api.example.com", "returner": True, "id": "id1",
                                "worker": "alice/2"}
    assert decode_ask(b'{"id": "x"}') == {"key": "", "returner": False, "id": "x",
                                          "worker": ""}
    for garbage in (b"", b"\xff\xfe", b"[]", b"null", b'{"key": 3}', b'{"returner": "yes"}',
                    b"{" * 10000):
        assert decode_ask(garbage) is None, garbage[:20]


def test_an_ask_for_a_key_too_long_is_answered_under_the_cut_key() -> None:
    """An older worker, or a task whose x-key came from another producer, asks for a key longer
    than the emitter sends: the arbiter counts it under the emitter's cut key (it dropped the
    ask before, and the asker asked again every 3 s until the broker's consumer timeout)."""
    long = "k" * 2000
    ask = decode_ask(encode_ask(long, False, "id1", "w"))
    assert ask is not None and ask["key"] == task_key(long)
    assert decode_ask(encode_ask(" a ", False, "id2", "w"))["key"] == "a", "as the emitter"
    lone = decode_ask(b'{"key": "\\ud800", "id": "x"}')
    assert lone is not None and lone["key"] == "?", "a lone surrogate cannot fail the arbiter"


def test_answer_round_trip_and_garbage() -> None:
    for answer in (Answer(True, 0.35), Answer(False, 141.0), Answer(True, 0.0)):
        assert decode_answer(encode_answer(answer)) == answer
    assert decode_answer(b'{"firm": false, "in": -1}') == Answer(False, 0.0)
    for garbage in (b"", b"{}", b'{"firm": 1, "in": 2}', b'{"firm": true, "in": "2"}',
                    b'{"firm": true, "in": NaN}', b'{"firm": true, "in": Infinity}',
                    b'{"firm": true, "in": true}', b"[1]", b"\x00"):
        assert decode_answer(garbage) is None, garbage


# --- the command in the control state (control/state.py) -------------------------------


def test_rate_limit_commands_add_up_last_wins() -> None:
    state = ControlState("w", 0.0)
    twenty = command("rate-limit", limit=RateLimit(20.0, True, "20/s"), by="bob@h1")
    assert decode(json.dumps(twenty).encode()) == twenty
    assert twenty["per_second"] == 20.0 and twenty["per_key"] is True
    assert state.apply(twenty) == "rate-limit"
    assert state.rate_limit == RateLimit(20.0, True, "20/s", "bob@h1", twenty["id"])
    assert state.ever_limited
    again = command("rate-limit", limit=RateLimit(20.0, True, "20/s"), by="eve@h2")
    assert state.apply(again) is None  # nothing changes for the worker...
    assert state.rate_limit is not None and state.rate_limit.by == "eve@h2"  # ...but who
    assert state.apply(command("rate-limit", limit=RateLimit(5.0, False, "5/s"))) == "rate-limit"
    off = command("rate-limit", limit=None)
    assert off["per_second"] is None and off["text"] == "off"
    assert state.apply(off) == "rate-limit"
    assert state.rate_limit is None and state.ever_limited
    assert state.apply(off) is None


def test_an_off_alone_is_no_limit_ever() -> None:
    state = ControlState("w", 0.0)
    assert state.apply(command("rate-limit")) is None
    assert state.rate_limit is None and not state.ever_limited


@pytest.mark.parametrize("bad", [
    {"per_second": 0}, {"per_second": "20/s"}, {"per_second": 1e6}, {"per_key": 1},
    {"per_second": math.nan},
])
def test_malformed_rate_limit_commands_are_ignored(bad: dict) -> None:
    record = {**command("rate-limit", limit=RateLimit(2.0, False, "2/s")), **bad}
    assert decode(json.dumps(record).encode()) is None
    state = ControlState("w", 0.0)
    assert state.apply(record) is None and state.rate_limit is None
