"""The retry / dead-letter / delivery-limit policy (policy.py): pure logic, no broker."""

from __future__ import annotations

import pika

from taskqueue.broker.config import QueueSpec
from taskqueue.worker.consumer import WorkerOptions
from taskqueue.worker.delivery import Delivery, Overruns
from taskqueue.worker.policy import after_work, before_work, broker_limit_clash
from taskqueue.worker.work import Outcome

QUEUE = QueueSpec("jobs")
OPTIONS = WorkerOptions(name="w", max_retries=2, retry_delay=1.5, max_task_bytes=100,
                        delivery_limit=3)


def delivery(body: bytes = b"resize cat.jpg", **headers: object) -> Delivery:
    return Delivery(None, 1, pika.BasicProperties(headers=headers or None), body, False)


def test_done_is_an_ack_with_no_copy():
    task = delivery()
    assert before_work(task, OPTIONS, QUEUE, "w/1") is None
    verdict = after_work(task, Outcome(True, "ok"), OPTIONS, QUEUE, "w/1")
    assert (verdict.outcome, verdict.copy_to) == ("done", None)


def test_a_failure_is_retried_with_the_count_and_the_delay_then_dead():
    task = delivery()
    assert before_work(task, OPTIONS, QUEUE, "w/1") is None
    first = after_work(task, Outcome(False, reason="boom"), OPTIONS, QUEUE, "w/1")
    assert (first.outcome, first.copy_to, first.expiration) == ("retry", "jobs.retry", "1500")
    assert first.headers == {"x-retries": 1, "x-last-error": "boom",
                             "x-check-from": int(task.received)}, "checked from this attempt"
    again = delivery(**first.headers, **{"x-delivery-count": 0})
    before_work(again, OPTIONS, QUEUE, "w/2")
    second = after_work(again, Outcome(False, reason="boom"), OPTIONS, QUEUE, "w/2")
    assert second.outcome == "retry" and second.headers["x-retries"] == 2
    assert "x-delivery-count" not in second.headers, "the broker's count is not carried over"
    last = delivery(**second.headers)
    before_work(last, OPTIONS, QUEUE, "w/3")
    dead = after_work(last, Outcome(False, reason="still boom"), OPTIONS, QUEUE, "w/3")
    assert (dead.outcome, dead.copy_to) == ("dead", "jobs.dead")
    assert dead.headers["x-death-reason"] == "failed 3 times; last: still boom"
    assert dead.headers["x-original-queue"] == "jobs"
    assert dead.headers["x-dead-lettered-by"] == "w/3"


def test_max_retries_zero_sends_the_first_failure_to_dead():
    options = WorkerOptions(name="w", max_retries=0)
    task = delivery()
    before_work(task, options, QUEUE, "w")
    assert after_work(task, Outcome(False, reason="x"), options, QUEUE, "w").outcome == "dead"


def test_unworkable_messages_go_to_dead_unread():
    cases = {b"": "empty message", b"x" * 101: "exceeds 100",
             b"\xff\xfe": "not UTF-8"}
    for body, reason in cases.items():
        verdict = before_work(delivery(body), OPTIONS, QUEUE, "w")
        assert verdict.outcome == "dead" and reason in verdict.reason, (body, verdict)
    bad = before_work(delivery(**{"x-retries": "many"}), OPTIONS, QUEUE, "w")
    assert bad.outcome == "dead" and "x-retries is not a whole number" in bad.reason


def test_the_delivery_limit_counts_deliveries_without_an_ack():
    assert before_work(delivery(**{"x-delivery-count": 2}), OPTIONS, QUEUE, "w") is None
    verdict = before_work(delivery(**{"x-delivery-count": 3}), OPTIONS, QUEUE, "w")
    assert verdict.outcome == "dead" and "delivered 4 times without an ack" in verdict.reason
    assert "x-delivery-count" not in verdict.headers


def test_long_reasons_are_capped_in_headers():
    task = delivery()
    before_work(task, OPTIONS, QUEUE, "w")
    verdict = after_work(task, Outcome(False, reason="e" * 5000), OPTIONS, QUEUE, "w")
    assert len(verdict.headers["x-last-error"]) == 500


# --- RabbitMQ 4.x (issue 28) ----------------------------------------------------------------------
def test_returns_at_the_consumer_timeout_count_toward_the_delivery_limit():
    """4.3 takes a task back at the consumer timeout without counting it: the worker's own
    count (overruns) dead-letters it at --delivery-limit, with that reason; the larger of the
    two counts decides (3.x counts such a return in x-delivery-count as well)."""
    assert before_work(delivery(), OPTIONS, QUEUE, "w", overruns=2) is None
    verdict = before_work(delivery(), OPTIONS, QUEUE, "w", overruns=3)
    assert verdict.outcome == "dead"
    assert verdict.reason.startswith("taken back by the broker at its consumer timeout 3 times")
    both = before_work(delivery(**{"x-delivery-count": 3}), OPTIONS, QUEUE, "w", overruns=3)
    assert both.reason.startswith("delivered 4 times without an ack")


def test_overruns_are_counted_per_task_by_message_id_or_body():
    overruns = Overruns()
    with_id = Delivery(None, 1, pika.BasicProperties(message_id="a:1"), b"x", False)
    again = Delivery(None, 7, pika.BasicProperties(message_id="a:1"), b"x", True)
    no_id = delivery(b"resize dog.jpg")
    assert (overruns.add(with_id), overruns.add(again), overruns.add(no_id)) == (1, 2, 1)
    assert overruns.count(delivery(b"resize dog.jpg")) == 1
    assert overruns.count(delivery(b"other")) == 0


def test_a_delivery_limit_above_the_broker_default_is_said_on_4x_quorum_queues():
    high = WorkerOptions(name="w", delivery_limit=21)
    assert "above RabbitMQ 4's default" in broker_limit_clash((4, 3, 6), "quorum", high)
    assert broker_limit_clash((4, 3, 6), "quorum", WorkerOptions(name="w", delivery_limit=20)) \
        is None
    assert broker_limit_clash((3, 10, 8), "quorum", high) is None
    assert broker_limit_clash((4, 0, 5), "classic", high) is None
