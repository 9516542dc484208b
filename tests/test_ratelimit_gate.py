"""The rate gate against the real broker (worker/ratelimit.py, arbiter.py, permits.py): two
workers' gates in this process, each with its consuming and publishing connection on one I/O
loop, as a worker has them. One of them is the arbiter (the single active consumer of
<queue>.ratelimit), answers are spaced by the rate, a takeover starts quiet (R1), an ask
nobody took is asked again, asks outlive a lost publishing connection, and `off` leaves the
queue without consumers. Assertions are on the answers' waits, never on how long things took."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
import pytest
from pika.adapters.select_connection import IOLoop

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.topology import Topology, broker_version, companion_arguments
from taskqueue.control.ratelimit import ASK_TTL_MS, HOLD, TAU, TIERS, Answer, RateLimit
from taskqueue.worker.ratelimit import RateGate
from tests.helpers import MAIN_URL, queue_state

LOG = logging.getLogger("test_ratelimit_gate")
TEN = RateLimit(10.0, False, "10/s")
SPACING = 0.1  # 1 / 10 per second
SLACK = 0.03  # what a loop turn may add between an answer sent and read


@dataclass
class Worker:
    """One worker's gate and its two connections on the shared loop."""

    loop: IOLoop
    spec: QueueSpec
    name: str
    gate: RateGate = field(init=False)
    consuming: pika.SelectConnection | None = None
    publishing: pika.SelectConnection | None = None
    answers: list[tuple[float, Answer]] = field(default_factory=list)  # (read at, answer)

    def __post_init__(self) -> None:
        self.gate = RateGate(self.spec, LOG, self.name, self.loop)
        self.connect_consuming()
        self.connect_publishing()

    def _connect(self, on_open: Callable[[pika.SelectConnection], None],
                 on_close: Callable[[], None]) -> pika.SelectConnection:
        return pika.SelectConnection(pika.URLParameters(MAIN_URL), on_open_callback=on_open,
                                     on_close_callback=lambda _c, _r: on_close(),
                                     custom_ioloop=self.loop)

    def connect_consuming(self) -> None:
        def opened(connection: pika.SelectConnection) -> None:
            topology = Topology("quorum", version=broker_version(connection))
            self.gate.consuming_ready(connection, topology)
        self.consuming = self._connect(opened, self.gate.consuming_lost)

    def connect_publishing(self) -> None:
        self.publishing = self._connect(self.gate.publishing_ready, lambda: None)

    def ask(self, key: str = "") -> None:
        self.gate.ask(key, False, lambda answer: self.answers.append((time.monotonic(),
                                                                      answer)))

    def close(self) -> None:
        self.gate.close()
        for connection in (self.consuming, self.publishing):
            if connection is not None and connection.is_open:
                connection.close()


def run_until(loop: IOLoop, predicate: Callable[[], object], what: str,
              timeout: float = 30.0) -> None:
    """Run the loop until *predicate* holds (checked every 20 ms) or *timeout* passes."""
    deadline = time.monotonic() + timeout

    def poll() -> None:
        if predicate() or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.02, poll)

    loop.call_later(0, poll)
    loop.start()
    assert predicate(), f"timed out after {timeout} s waiting for {what}"


def ctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-n", "rabbit@localhost", "-q", *args],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def ratelimit_consumers(spec: QueueSpec) -> int:
    """Consumers of .ratelimit, as the broker lists them (a quorum queue's count in a
    declare-ok or list_queues is refreshed only now and then)."""
    return sum(line.split("\t")[0] == spec.ratelimit_name
               for line in ctl("list_consumers", "--no-table-headers").splitlines())


def starts(answers: list[tuple[float, Answer]]) -> list[float]:
    """When each answer says to start, on this process's clock, earliest first."""
    return sorted(read_at + answer.wait for read_at, answer in answers)


@pytest.fixture
def pair(queue: str):
    loop = IOLoop()
    spec = QueueSpec(queue)
    workers = [Worker(loop, spec, "alice"), Worker(loop, spec, "bob")]
    yield loop, spec, workers
    for worker in workers:
        worker.close()
    run_until(loop, lambda: all(connection is None or connection.is_closed
                                for worker in workers
                                for connection in (worker.consuming, worker.publishing)),
              "the connections to close", timeout=10)


def test_one_arbiter_answers_at_the_rate_and_a_takeover_starts_quiet(pair) -> None:
    loop, spec, workers = pair
    for worker in workers:
        worker.gate.apply(TEN)
    run_until(loop, lambda: ratelimit_consumers(spec) == 2, "both gates to consume .ratelimit")
    version = broker_version(workers[0].consuming)
    with pika.BlockingConnection(pika.URLParameters(MAIN_URL)) as connection:
        for name in spec.rate_queues:  # refused (406) unless made with exactly these
            connection.channel().queue_declare(name, durable=True, arguments=companion_arguments(
                spec, name, "quorum", version))

    for number in range(40):
        workers[number % 2].ask()
    run_until(loop, lambda: sum(len(worker.answers) for worker in workers) == 40,
              "40 answers")
    arbiters = [worker for worker in workers if worker.gate.snapshot()["arbiter"]]
    assert len(arbiters) == 1, [worker.gate.snapshot() for worker in workers]
    answers = [answer for worker in workers for _read, answer in worker.answers]
    assert min(answer.wait for answer in answers) >= HOLD + TAU - SLACK, \
        "R1: a new arbiter's first turn is HOLD + TAU ahead"
    times = starts([item for worker in workers for item in worker.answers])
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert all(abs(gap - SPACING) < SLACK for gap in gaps), gaps
    assert arbiters[0].gate.snapshot()["busiest"][0][0] == ""

    # The arbiter's worker goes (its consuming connection): the other one takes over.
    arbiter = arbiters[0]
    other = workers[1 - workers.index(arbiter)]
    arbiter.consuming.close()
    run_until(loop, lambda: arbiter.consuming.is_closed and ratelimit_consumers(spec) == 1,
              "the arbiter's consumer to go")
    other.answers.clear()
    for _ in range(10):
        other.ask()
    run_until(loop, lambda: len(other.answers) == 10, "10 answers from the new arbiter")
    assert other.gate.snapshot()["arbiter"] and not arbiter.gate.snapshot()["arbiter"]
    assert min(answer.wait for _read, answer in other.answers) >= HOLD + TAU - SLACK, \
        "R1: the new arbiter starts quiet, after the old one's tickets"
    times = starts(other.answers)
    assert all(abs(later - earlier - SPACING) < SLACK
               for earlier, later in zip(times, times[1:])), times

    # A key longer than an ask may carry (another producer's x-key) is answered all the same.
    other.answers.clear()
    other.ask("k" * 2000)
    run_until(loop, lambda: other.answers, "an answer for a 2000-character key", timeout=10)

    # Off: nobody consumes .ratelimit any more; the queues stay.
    for worker in workers:
        worker.gate.apply(None)
    run_until(loop, lambda: ratelimit_consumers(spec) == 0, "no consumer on .ratelimit")
    assert all(worker.gate.snapshot() == {} for worker in workers)
    assert all(queue_state(name) is not None for name in spec.rate_queues)


def test_an_ask_nobody_took_is_asked_again_and_asks_outlive_a_lost_connection(pair) -> None:
    loop, spec, (alice, bob) = pair
    alice.gate.apply(None)  # a limit was given once: the queues are made, nobody arbitrates
    bob.gate.apply(None)
    run_until(loop, lambda: alice.gate.permits.ready and queue_state(spec.ratelimit_name)
              is not None, "the rate queues and alice's ask channel")
    alice.ask()
    run_until(loop, lambda: alice.gate.permits.asked == 1, "the first ask")
    loop.call_later(2.0, lambda: bob.gate.apply(TEN))  # after the ask expired (1.5 s) unread
    run_until(loop, lambda: alice.answers, "an answer to the ask asked again")
    assert alice.gate.permits.asked == 2, "asked twice: the first ask expired unanswered"
    assert bob.gate.snapshot()["arbiter"]

    # A cancelled wait's answer is never delivered (answers come back in the asks' order).
    alice.answers.clear()
    cancel = alice.gate.ask("gone", False, lambda answer: alice.answers.append((0.0, answer)))
    cancel()
    alice.ask("kept")
    run_until(loop, lambda: alice.gate.permits.asked == 4 and alice.answers, "the kept answer")
    assert len(alice.answers) == 1 and alice.answers[0][0] > 0

    # Alice's publishing connection goes; an ask waits for the next one and is sent on it.
    alice.publishing.close()
    run_until(loop, lambda: alice.publishing.is_closed and not alice.gate.permits.ready,
              "alice's publishing connection to close")
    alice.answers.clear()
    alice.ask("k")
    alice.connect_publishing()
    run_until(loop, lambda: alice.answers, "the answer to an ask sent on the new connection")
    assert alice.gate.permits.asked == 5


@pytest.mark.fast
def test_the_rate_queues_arguments() -> None:
    spec = QueueSpec("q")
    assert spec.rate_queues == ["q.ratelimit", *(f"q.wait.{n}s" for n in TIERS)]
    assert set(spec.rate_queues) <= set(spec.everything), "delete-queue removes them"
    assert not set(spec.rate_queues) & set(spec.all_queues), "made lazily, not at start"
    for task_type in ("quorum", "classic"):  # quorum whatever the task queue (S7)
        assert spec.companion_arguments("q.ratelimit", task_type, (3, 10, 8)) == {
            "x-queue-type": "quorum", "x-single-active-consumer": True,
            "x-message-ttl": ASK_TTL_MS}
    assert "x-queue-type" not in spec.companion_arguments("q.ratelimit", "quorum", (3, 9))
    tier = spec.companion_arguments("q.wait.64s", "quorum", (3, 10, 8))
    retry = spec.companion_arguments("q.retry", "quorum", (3, 10, 8))
    assert tier == {**retry, "x-message-ttl": 64_000}
    assert spec.companion_arguments("q.wait.1s", "classic", (3, 10, 8)) == {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q", "x-message-ttl": 1000}
    for name in spec.rate_queues:  # 4.x: no delivery limit, as .retry and .dead
        assert companion_arguments(spec, name, "quorum", (4, 3))["x-delivery-limit"] == -1


class FakeLoop:
    def __init__(self) -> None:
        self.later: list[Callable[[], None]] = []

    def call_later(self, _delay: float, callback: Callable[[], None]) -> object:
        self.later.append(callback)
        return callback

    def remove_timeout(self, handle: object) -> None:
        self.later.remove(handle)  # type: ignore[arg-type]


@pytest.mark.fast
def test_no_limit_applies_while_the_rate_queues_cannot_be_declared(monkeypatch) -> None:
    """The log says 'meanwhile no task waits for its turn': so it is. A task asking then would
    ask a queue that is not there, and wait until the broker's consumer timeout."""
    declared: list[bool] = [False]

    def declare(_connection, _spec, _topology, done, failed) -> None:
        if declared[0]:
            done([])
        else:
            failed(RuntimeError("access refused"))

    monkeypatch.setattr("taskqueue.worker.ratelimit.declare_rate_queues", declare)
    loop = FakeLoop()
    gate = RateGate(QueueSpec("q"), LOG, "w", loop)  # type: ignore[arg-type]
    told: list[RateLimit | None] = []
    gate.on_change(told.append)
    connection = type("Open", (), {"is_open": True})()
    gate.consuming_ready(connection, Topology())  # type: ignore[arg-type]
    gate.apply(TEN)
    assert gate.limit() is None and told[-1] is None and gate.snapshot() == {}
    declared[0] = True
    loop.later.pop()()  # the retry, RETRY_SECONDS later
    assert gate.limit() == TEN and told[-1] == TEN
    gate.apply(None)
    assert gate.limit() is None and told[-1] is None
