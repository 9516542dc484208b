"""A rate limit's park and wait on the worker's side (policy.park, worker/rate_wait.py): pure,
no broker. The arbiter's scheduler has its own tests (test_fast_ratelimit.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace

import pika
import pytest

from taskqueue.broker.config import QueueSpec
from taskqueue.control.ratelimit import HOLD, Answer, RateLimit, tier_for
from taskqueue.control.requeue import DROPPED_HEADERS
from taskqueue.emitter.tasks import task_key as emitted_key
from taskqueue.wire.messages import CHECK_FROM, PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS, X_KEY
from taskqueue.wire.record import CLOCK_SKEW
from taskqueue.worker.account import WorkerAccount, WorkerOptions
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.in_hand import InHand
from taskqueue.worker.life import DeliveryLife, WorkerParts
from taskqueue.worker.phase import Phase
from taskqueue.worker.policy import MAX_LEFT, Verdict, after_work, before_work, dead_letter, park
from taskqueue.worker.rate_wait import ASK_GIVE_UP, POLL_SECONDS, RateWaits
from taskqueue.worker.settlement import Settlement, Step
from taskqueue.worker.slots import WorkSlot
from taskqueue.worker.work import Outcome, SimulatedWork

QUEUE = QueueSpec("jobs")
OPTIONS = WorkerOptions(name="w", delivery_limit=3)
BROKER_OWN = {"x-delivery-count": 2, "x-death": [{"queue": "jobs.wait.4s", "count": 1}],
              "x-first-death-queue": "jobs.wait.4s", "x-first-death-reason": "expired",
              "x-last-death-queue": "jobs.wait.4s", "x-last-death-reason": "expired"}


def delivery(body: bytes = b"fetch a.example", message_id: str = "t.csv:1:ab",
             **headers: object) -> Delivery:
    task = Delivery(None, 1, pika.BasicProperties(headers=headers or None,  # type: ignore[arg-type]
                                                  message_id=message_id, type="task"),
                    body, False)
    assert task.problem(1000) is None
    return task


# --- the park copy's headers --------------------------------------------------------------
def test_a_park_goes_to_the_longest_tier_within_the_wait_with_what_is_left():
    task = delivery(**{"x-retries": 1, "x-last-error": "boom", X_KEY: "api.example.com"})
    verdict = park(task, 141.0, QUEUE)
    assert (verdict.outcome, verdict.copy_to, verdict.expiration) == ("parked", "jobs.wait.64s",
                                                                      None)
    assert verdict.headers == {"x-retries": 1, "x-last-error": "boom", X_KEY: "api.example.com",
                               RATE_LEFT: 77.0, RATE_PARKS: 1, PRIOR_DELIVERIES: 0,
                               CHECK_FROM: int(task.received)}, "x-retries unchanged: no attempt"


@pytest.mark.parametrize(("wait", "tier", "left"), [(0.0, 1, 0.0), (0.4, 1, 0.0), (1.0, 1, 0.0),
                                                    (3.9, 1, 2.9), (4.0, 4, 0.0),
                                                    (20000.0, 16384, 3616.0)])
def test_the_tier_and_what_is_left(wait: float, tier: int, left: float):
    verdict = park(delivery(), wait, QUEUE)
    assert verdict.copy_to == f"jobs.wait.{tier}s"
    assert float(verdict.headers[RATE_LEFT]) == pytest.approx(left)


@pytest.mark.parametrize("wait", [0.0, 2.2449, 77.0, 3.9, 1e6, 1e12])
def test_the_copy_can_be_sent_and_read_back(wait: float):
    """pika encodes no float in headers: x-rate-left goes as an AMQP decimal (to the ms)."""
    headers = park(delivery(**BROKER_OWN), wait, QUEUE).headers
    sent = pika.BasicProperties(headers=headers)
    back = pika.BasicProperties()
    back.decode(b"".join(sent.encode()))
    left = delivery(**back.headers).rate_left
    assert left == pytest.approx(min(max(0.0, wait - tier_for(wait)), MAX_LEFT), abs=0.001)


def test_the_broker_headers_are_stripped_and_its_count_carried_on():
    """R6: no x-death and co. (their handling changed across versions); R5: the broker's count
    of deliveries without an ack is carried, added to what an earlier park carried."""
    task = delivery(**BROKER_OWN, **{PRIOR_DELIVERIES: 3, RATE_PARKS: 2, "x-own": "kept"})
    headers = park(task, 10.0, QUEUE).headers
    assert not [name for name in headers if "death" in name or name == "x-delivery-count"]
    assert headers[PRIOR_DELIVERIES] == 5 and headers[RATE_PARKS] == 3
    assert headers["x-own"] == "kept"


def test_hops_follow_the_tiers_down_until_at_most_hold_is_left():
    """R3: each hop subtracts its tier from what is left (no clock is read), and a hop keeps the
    parks count and the x-check-from it was given (it was not checked)."""
    first = park(delivery(), 1000.0, QUEUE)
    tiers, headers = [first.copy_to], first.headers
    while (back := delivery(**headers)).rate_left > HOLD:
        hop = park(back, back.rate_left, QUEUE, hop=True)
        assert hop.headers[CHECK_FROM] == first.headers[CHECK_FROM]
        assert hop.headers[RATE_PARKS] == 1
        tiers.append(hop.copy_to)
        headers = hop.headers
    assert [name.split(".")[-1] for name in tiers] == [
        "256s", "256s", "256s", "64s", "64s", "64s", "16s", "16s", "4s", "4s"]
    assert back.rate_left == 0.0


def test_a_hop_without_check_from_checks_from_where_the_task_could_first_be_done():
    task = Delivery(None, 1, pika.BasicProperties(headers={RATE_LEFT: 30}, type="task",  # type: ignore[arg-type]
                                                  timestamp=1_800_000_000), b"x", False)
    task.problem(100)
    assert park(task, task.rate_left, QUEUE, hop=True).headers[CHECK_FROM] == 1_800_000_000
    foreign = delivery(**{RATE_LEFT: 30})
    foreign.properties.type, foreign.properties.timestamp = None, None
    assert park(foreign, 30.0, QUEUE, hop=True).headers[CHECK_FROM] == 1, "from the start"
    assert delivery(**park(foreign, 30.0, QUEUE, hop=True).headers).needs_check


def test_a_parked_copy_comes_back_checked():
    back = delivery(**park(delivery(), 5.0, QUEUE).headers)
    assert back.needs_check
    assert back.check_from == pytest.approx(int(back.received) - CLOCK_SKEW, abs=2)


def test_the_delivery_limit_counts_deliveries_before_a_park():
    """R5: a task that killed its worker twice, then was parked (its count dropped), is
    stopped at --delivery-limit 3 on its next redelivery all the same."""
    assert before_work(delivery(**{PRIOR_DELIVERIES: 2}), OPTIONS, QUEUE, "w") is None
    verdict = before_work(delivery(**{PRIOR_DELIVERIES: 2, "x-delivery-count": 1}), OPTIONS,
                          QUEUE, "w")
    assert verdict is not None and verdict.outcome == "dead"
    assert "delivered 4 times" in verdict.reason
    crashed = delivery(**{"x-delivery-count": 2})
    parked_twice = park(delivery(**park(crashed, 8.0, QUEUE).headers), 8.0, QUEUE)
    assert parked_twice.headers[PRIOR_DELIVERIES] == 2, "carried through two parks"
    crashed_again = delivery(**parked_twice.headers, **{"x-delivery-count": 1})
    assert before_work(crashed_again, OPTIONS, QUEUE, "w").outcome == "dead"


@pytest.mark.parametrize("header", [RATE_LEFT, RATE_PARKS, PRIOR_DELIVERIES])
def test_unreadable_rate_headers_make_the_message_unworkable(header: str):
    task = Delivery(None, 1, pika.BasicProperties(headers={header: "soon"}), b"x",  # type: ignore[arg-type]
                    False)
    assert header in (task.problem(100) or "")


# --- the wait in the slot (rate_wait.py), with a fake gate and fake timers --------------------
class FakeGate:
    def __init__(self, limit: RateLimit | None) -> None:
        self.current = limit
        self.asks: list[tuple[str, bool, Callable[[Answer], None]]] = []
        self.cancelled = 0
        self.listeners: list[Callable[[RateLimit | None], None]] = []

    def limit(self) -> RateLimit | None:
        return self.current

    def ask(self, key: str, returner: bool, on_answer: Callable[[Answer], None]
            ) -> Callable[[], None]:
        self.asks.append((key, returner, on_answer))

        def cancel() -> None:
            self.cancelled += 1
        return cancel

    def on_change(self, callback: Callable[[RateLimit | None], None]) -> None:
        self.listeners.append(callback)

    def answer(self, firm: bool, wait: float) -> None:
        self.asks[-1][2](Answer(firm, wait))

    def set(self, limit: RateLimit | None) -> None:
        self.current = limit
        for listener in self.listeners:
            listener(limit)


class FakeClock:
    """Wall and monotonic time in one, and the I/O loop's timers on it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.timers: dict[int, tuple[float, Callable[[], None]]] = {}
        self._next = 0

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        self._next += 1
        self.timers[self._next] = (self.now + delay, callback)
        return self._next

    def remove_timeout(self, handle: object) -> None:
        self.timers.pop(handle, None)  # type: ignore[call-overload]

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [(at, handle) for handle, (at, _cb) in self.timers.items() if at <= end]
            if not due:
                break
            at, handle = min(due)
            self.now = max(self.now, at)
            self.timers.pop(handle)[1]()
        self.now = end


class Harness:
    def __init__(self, limit: RateLimit | None, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = FakeClock()
        monkeypatch.setattr("taskqueue.worker.rate_wait.time.monotonic", self.clock)
        self.gate = FakeGate(limit)
        self.phase = Phase.CONSUMING
        self.started: list[Delivery] = []
        self.verdicts: list[Verdict] = []
        self.due: list[float] = []
        self.slot = WorkSlot("w/1", SimulatedWork(0.0), lambda *_: None, lambda _fn: None)
        self.cancelled: list[Delivery] = []
        self.waits = RateWaits(self.gate, QUEUE, logging.getLogger("test"), lambda: self.phase,
                               lambda _delivery: self.clock, self.start, self.cancel,
                               self.carry_out, self.due.append, lambda: None, clock=self.clock)

    def cancel(self, slot: WorkSlot, task: Delivery) -> bool:
        if any(task is gone for gone in self.cancelled):
            self.verdicts.append(Verdict("cancelled", "run r was cancelled"))
            return True  # (its record is not confirmed yet: the settlement is not over)
        return False

    def start(self, slot: WorkSlot, task: Delivery, settlement: Settlement) -> None:
        settlement.work_started()
        self.started.append(task)

    def carry_out(self, slot: WorkSlot, task: Delivery, verdict: Verdict) -> None:
        self.verdicts.append(verdict)

    def begin(self, task: Delivery) -> Settlement:
        settlement = Settlement(task, None, lambda _s: None)  # type: ignore[arg-type]
        self.slot.delivery = task
        assert self.waits.begin(self.slot, task, settlement)
        return settlement


GLOBAL = RateLimit(5.0, False, "5/s")
PER_KEY = RateLimit(2.0, True, "2/s")


def test_no_limit_no_wait(monkeypatch):
    harness = Harness(None, monkeypatch)
    task = delivery(**{RATE_LEFT: 500})
    assert not harness.waits.begin(harness.slot, task, Settlement(task, None, print))  # type: ignore[arg-type]
    assert not harness.waits.hop(harness.slot, task), "no limit: a parked task runs"


def test_a_firm_ticket_waits_its_time_in_the_slot_then_starts(monkeypatch):
    harness = Harness(PER_KEY, monkeypatch)
    task = delivery(**{X_KEY: "a.example"})
    settlement = harness.begin(task)
    assert settlement.step is Step.WAITING_TURN and settlement.in_hand
    assert harness.gate.asks[0][:2] == ("a.example", False)
    harness.gate.answer(True, 0.75)
    assert harness.slot.rate_wait == {"key": "a.example", "until": harness.clock.now + 0.75}
    harness.clock.advance(0.7)
    assert not harness.started
    harness.clock.advance(0.1)
    assert harness.started == [task] and settlement.step is Step.RUNNING
    assert harness.slot.rate_wait is None and task.rate_waited


def test_global_mode_holds_a_short_soft_wait_then_asks_again_as_a_returner(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    task = delivery(**{X_KEY: "a.example"})
    harness.begin(task)
    assert harness.gate.asks[0][:2] == ("", False), "global: one key for all"
    harness.gate.answer(False, 12.0)
    harness.clock.advance(10.9)
    assert len(harness.gate.asks) == 1
    harness.clock.advance(0.2)  # at wait - HOLD/2
    assert harness.gate.asks[1][:2] == ("", True) and not harness.verdicts
    harness.gate.answer(True, 0.5)
    harness.clock.advance(0.5)
    assert harness.started == [task]


@pytest.mark.parametrize(("limit", "wait"), [(PER_KEY, 5.0), (GLOBAL, 31.0)])
def test_a_long_or_per_key_soft_wait_parks(monkeypatch, limit, wait):
    harness = Harness(limit, monkeypatch)
    task = delivery()
    harness.begin(task)
    harness.gate.answer(False, wait)
    [verdict] = harness.verdicts
    assert verdict.outcome == "parked" and verdict.headers[RATE_PARKS] == 1
    assert harness.due and harness.slot.rate_wait is None and not harness.clock.timers


def test_a_returner_asks_as_one_and_a_late_one_hops_unasked(monkeypatch):
    harness = Harness(PER_KEY, monkeypatch)
    harness.begin(delivery(**{RATE_PARKS: 1, RATE_LEFT: 1.5}))
    assert harness.gate.asks[0][1] is True
    early = delivery(**{RATE_PARKS: 1, RATE_LEFT: 40.0})
    assert harness.waits.hop(harness.slot, early)
    assert harness.verdicts[-1].copy_to == "jobs.wait.16s" and len(harness.gate.asks) == 1


def test_the_limit_off_starts_every_waiting_slot_and_a_change_asks_again(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    task = delivery(**{X_KEY: "k"})
    harness.begin(task)
    harness.gate.answer(False, 20.0)  # held
    harness.gate.set(PER_KEY)
    assert harness.gate.asks[-1][:2] == ("k", True), "asks again, under its key now"
    harness.gate.set(None)
    assert harness.started == [task] and harness.gate.cancelled == 1
    assert not harness.clock.timers


def test_a_pause_while_waiting_parks_what_is_left(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    harness.begin(delivery())
    harness.gate.answer(False, 20.0)
    harness.clock.advance(3.0)
    harness.phase = Phase.PAUSED
    harness.clock.advance(POLL_SECONDS)
    [verdict] = harness.verdicts
    assert verdict.copy_to == "jobs.wait.16s"
    assert float(verdict.headers[RATE_LEFT]) == pytest.approx(20.0 - 3.0 - POLL_SECONDS - 16,
                                                              abs=0.01)
    assert not harness.started and not harness.clock.timers


def test_a_pause_while_asking_parks_it_for_the_shortest_tier(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    harness.begin(delivery())
    harness.phase = Phase.DRAINING
    harness.clock.advance(POLL_SECONDS)
    assert harness.verdicts[0].copy_to == "jobs.wait.1s" and harness.gate.cancelled == 1


def test_over_while_waiting_forgets_the_ask_and_the_timer(monkeypatch):
    harness = Harness(PER_KEY, monkeypatch)
    harness.begin(delivery())
    harness.waits.forget(harness.slot)
    assert harness.gate.cancelled == 1 and not harness.clock.timers
    harness.gate.answer(True, 0.0)  # a late answer (the gate should not give it): ignored
    assert not harness.started


def test_the_record_and_the_snapshot_say_the_wait(monkeypatch):
    harness = Harness(PER_KEY, monkeypatch)
    task = delivery(**{RATE_PARKS: 2, X_KEY: "k"})
    harness.begin(task)
    account = WorkerAccount(OPTIONS, "h", [harness.slot], None)  # type: ignore[arg-type]
    snapshot = account.snapshot("running", True, {"limit": "2/s", "per_key": True})
    assert snapshot["rate"] == {"limit": "2/s", "per_key": True}
    assert snapshot["slots"][0]["rate_wait"] == {"key": "k"}, "asked: no time to count down"
    harness.gate.answer(True, 1.5)
    assert account.snapshot("running", True, {})["slots"][0]["rate_wait"] == {
        "key": "k", "until": harness.clock.now + 1.5}
    assert "rate" not in account.snapshot("running", True, {})
    task.started = task.received + 1.25
    record = account.record(harness.slot, task, "done", 0.1)
    assert (record["waited"], record["parks"]) == (1.25, 2)
    plain = delivery()
    assert "waited" not in account.record(harness.slot, plain, "done", 0.1)


def test_a_task_cancelled_while_it_waits_is_recorded_cancelled_at_the_next_look(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    task = delivery()
    harness.begin(task)
    harness.gate.answer(False, 25.0)  # held
    harness.cancelled.append(task)
    harness.clock.advance(POLL_SECONDS)
    assert [verdict.outcome for verdict in harness.verdicts] == ["cancelled"]
    assert not harness.started and not harness.clock.timers and harness.gate.cancelled == 0
    assert harness.slot.rate_wait is None
    harness.gate.set(None)  # the limit off meanwhile: nothing of that wait starts
    assert not harness.started


def test_an_ask_unanswered_for_a_minute_parks_the_task(monkeypatch, caplog):
    """No arbiter, an alarm, no rate queues: no answer ever comes. The slot must not hold the
    task until the broker's consumer timeout takes it back: after ASK_GIVE_UP s it is parked
    for the shortest tier (one warning line), and asks again when it is back."""
    harness = Harness(PER_KEY, monkeypatch)
    harness.begin(delivery(**{X_KEY: "k"}))
    harness.clock.advance(ASK_GIVE_UP - POLL_SECONDS)
    assert not harness.verdicts
    with caplog.at_level(logging.WARNING, logger="test"):
        harness.clock.advance(2 * POLL_SECONDS)
    [verdict] = harness.verdicts
    assert verdict.outcome == "parked" and verdict.copy_to == "jobs.wait.1s"
    assert verdict.headers[RATE_PARKS] == 1
    assert harness.slot.rate_wait is None and not harness.clock.timers
    assert harness.gate.cancelled == 1 and not harness.started
    [line] = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert "no answer" in line and "60 s" in line


def test_a_key_longer_than_an_ask_carries_is_cut_as_the_emitter_cuts_it(monkeypatch):
    """Another producer's x-key of 2000 characters: asked for under the emitter's cut key
    (256 UTF-8 bytes, ~ and a sha1), which the arbiter answers, not under the whole key."""
    long = "k" * 2000
    assert delivery(**{X_KEY: long}).key == emitted_key(long)
    assert delivery(**{X_KEY: long.encode()}).key == emitted_key(long)
    harness = Harness(PER_KEY, monkeypatch)
    harness.begin(delivery(**{X_KEY: long}))
    assert harness.gate.asks[0][0] == emitted_key(long)


# --- what a park carried does not outlive the attempt -------------------------------------
PARKED_BEFORE = {PRIOR_DELIVERIES: 4, RATE_LEFT: 500, RATE_PARKS: 3, "x-own": "kept"}


def test_a_retry_or_dead_copy_leaves_the_parks_counts_behind():
    """A retry is a new attempt (its broker count was dropped, so are the deliveries before a
    park); a stale x-rate-left would make it hop for an old wait unasked; the parks counted
    belong to the attempt that ended. A dead copy carries none of them either."""
    task = delivery(**PARKED_BEFORE)
    retry = after_work(task, Outcome(False, reason="boom"), OPTIONS, QUEUE, "w")
    dead = dead_letter(task, "r", QUEUE, "w")
    for verdict in (retry, dead):
        assert not {PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS} & set(verdict.headers), verdict
        assert verdict.headers["x-own"] == "kept"
    again = delivery(**retry.headers)
    assert (again.deliveries, again.rate_left, again.parks) == (0, 0.0, 0)


def test_requeue_dead_gives_a_fresh_count():
    assert {PRIOR_DELIVERIES, RATE_LEFT, RATE_PARKS} <= set(DROPPED_HEADERS)


# --- nothing a wait does raises into the I/O loop ---------------------------------------------
class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.nacked: list[int] = []

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.nacked.append(tag)


class FakeOutbox:
    def forget(self, _journal: object) -> None:
        pass


def test_a_cancellation_look_that_raises_puts_the_task_back(monkeypatch):
    """The look every POLL_SECONDS runs in a timer: whatever it raises, the task goes back
    to the queue and the loop goes on."""
    harness = Harness(GLOBAL, monkeypatch)
    task = delivery()
    task.channel = FakeChannel()  # type: ignore[assignment]
    settlement = harness.begin(task)
    settlement.outbox = FakeOutbox()  # type: ignore[assignment]

    def broken(_slot: WorkSlot, _task: Delivery) -> bool:
        raise RuntimeError("the control state is broken")
    harness.waits._cancelled = broken  # type: ignore[method-assign]
    harness.clock.advance(POLL_SECONDS)  # (raised out of the timer before)
    assert settlement.step is Step.REQUEUED and task.channel.nacked == [1]
    assert harness.slot.rate_wait is None and not harness.clock.timers


def test_a_limit_change_that_fails_for_one_slot_still_reaches_the_others(monkeypatch):
    harness = Harness(GLOBAL, monkeypatch)
    first, second = delivery(), delivery()
    first.channel = FakeChannel()  # type: ignore[assignment]
    one = harness.begin(first)
    one.outbox = FakeOutbox()  # type: ignore[assignment]
    harness.gate.answer(False, 20.0)  # held
    harness.slot = WorkSlot("w/2", SimulatedWork(0.0), lambda *_: None, lambda _fn: None)
    harness.begin(second)
    harness.gate.answer(False, 20.0)
    asked = len(harness.gate.asks)
    real_ask = harness.gate.ask

    def ask_once_broken(key: str, returner: bool, on_answer: Callable[[Answer], None]
                        ) -> Callable[[], None]:
        harness.gate.ask = real_ask  # type: ignore[method-assign]
        raise RuntimeError("no channel")
    harness.gate.ask = ask_once_broken  # type: ignore[method-assign]
    harness.gate.set(PER_KEY)  # (raised out of the gate's apply before, the 2nd not asked)
    assert one.step is Step.REQUEUED
    assert len(harness.gate.asks) == asked + 1, "the other slot asks again"


# --- the settlement's step decides -------------------------------------------------------------
def test_a_wait_ends_only_for_a_task_still_waiting_for_its_turn(monkeypatch):
    """The settlement's step is the one state: a task no longer WAITING_TURN when its ticket's
    time comes (started, or put back, behind the wait's back) is not started a second time."""
    harness = Harness(PER_KEY, monkeypatch)
    task = delivery()
    settlement = harness.begin(task)
    harness.gate.answer(True, 0.5)
    settlement.work_started()  # (the invariant broken: nothing in the code does this)
    harness.clock.advance(1.0)
    assert not harness.started and harness.slot.rate_wait is None and not harness.clock.timers


def life_holding(*steps: Step) -> tuple[DeliveryLife, list[dict], Overruns]:
    """A delivery life whose slots hold one task each, at *steps*, the first received first."""
    slots, recorded, overruns = [], [], Overruns()
    for number, step in enumerate(steps):
        slot = WorkSlot(f"w/{number + 1}", SimulatedWork(0.0), lambda *_: None, lambda _fn: None)
        task = delivery(message_id=f"t.csv:{number + 1}:ab")
        task.received = 1_800_000_000.0 + number
        slot.settlement = Settlement(task, None, lambda _s: None)  # type: ignore[arg-type]
        slot.settlement.step = step
        slots.append(slot)
    account = SimpleNamespace(stats=SimpleNamespace(failed_attempts=0),
                              record=lambda _slot, task, outcome, *_: {"row": task.row,
                                                                       "outcome": outcome})
    parts = WorkerParts(logging.getLogger("test"), QUEUE, OPTIONS, slots, [],
                        SimpleNamespace(record_result=recorded.append),  # type: ignore[arg-type]
                        account, None, None, None, overruns,  # type: ignore[arg-type]
                        lambda: Phase.CONSUMING, lambda *_: None, lambda: None,
                        InHand(slots, logging.getLogger("test")), lambda call: call())
    return DeliveryLife(parts), recorded, overruns


def test_a_consumer_timeout_on_a_task_waiting_for_its_turn_records_no_failed_attempt():
    """It never ran: no "failed" record, no overrun counted towards --delivery-limit."""
    life, recorded, overruns = life_holding(Step.WAITING_TURN, Step.RUNNING)
    assert life.taken_back("the broker closed the channel")
    assert recorded == [] and life.slots[0].failed == 0
    assert overruns.count(life.slots[0].settlement.delivery) == 0
    life, recorded, _overruns = life_holding(Step.RUNNING, Step.WAITING_TURN)
    assert life.taken_back("the broker closed the channel")
    assert recorded == [{"row": 1, "outcome": "failed"}]
