"""RabbitMQ 4.x's defaults and words (issue 28): no task lost to the broker's delivery limit,
a consumer timeout said as such and ended by our own limit, a queue's node down in 4.x words.

They run in the normal suite on 3.10 (where the behaviour exists there too) and in the 4.3
tier (scripts/rabbitmq4.sh). What 4.3 does, as measured (docs/queue-types.md): a quorum queue
drops a message at its 21st return (default delivery limit 20), counting a closed channel and a
basic.reject but not a basic.nack; a consumer timeout is a basic.cancel, and its return is not
counted in x-delivery-count.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid

import pika
import pytest

from taskqueue.broker.config import BrokerSettings, QueueSpec
from taskqueue.broker.topology import queue_unavailable
from taskqueue.control.requeue import DeadFilter, DeadMover
from tests.brokers import ThrowawayBroker
from tests.helpers import (
    MAIN_URL,
    consume_all,
    consumers,
    queue_state,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)

PREVIEWS = 30  # past 4.x's default delivery limit of 20
DEAD_TASKS = 5


def broker_version(url: str = MAIN_URL) -> tuple[int, ...]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        text = connection._impl.server_properties.get("version", b"")
    finally:
        connection.close()
    text = text.decode() if isinstance(text, bytes) else str(text)
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def declare(name: str, arguments: dict, url: str = MAIN_URL) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


def redeclare_refusal(name: str, arguments: dict) -> str | None:
    """The broker's 406 text for redeclaring *name* with *arguments*; None if it accepts."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_text
    finally:
        if connection.is_open:
            connection.close()


def publish_dead(name: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for number in range(1, count + 1):
            channel.basic_publish("", name, f"dead {number}".encode(), pika.BasicProperties(
                delivery_mode=2, message_id=f"dead:{number}",
                headers={"x-death-reason": "failed 1 times; last: boom"}))
    finally:
        connection.close()


def move_dead(queue: str, dry_run: bool, rewrite: bool | None = None) -> int:
    """requeue-dead in-process (30 subprocesses would take minutes on a busy machine):
    how many it moved (a dry run: would move)."""
    mover = DeadMover(BrokerSettings(urls=[MAIN_URL]), QueueSpec(queue),
                      logging.getLogger("test.requeue"), DeadFilter(), dry_run=dry_run,
                      rewrite=rewrite)
    mover.run()
    return mover.stats.moved


# --- 2. nothing lost to the broker's delivery limit ---------------------------------------------
@pytest.mark.parametrize("rewrite", [None, True], ids=["as-the-broker-needs", "rewriting"])
def test_previews_lose_no_dead_task_on_a_dead_queue_with_the_broker_limit(queue, rewrite):
    """A .dead made before this version (or by 3.x, then upgraded) has 4.x's default delivery
    limit of 20. Previewing it (requeue-dead --dry-run) 30 times, then requeueing, loses none:
    a preview gives the tasks back with basic.nack, which 4.3 does not count (a closed channel
    counted, and the 21st preview lost them all). 4.0-4.2 count a nack too: there a preview
    rewrites each task it looks at (this broker runs that path too: *rewriting*)."""
    spec = QueueSpec(queue)
    declare(queue, {"x-queue-type": "quorum"})
    declare(spec.dead_name, {"x-queue-type": "quorum"})  # no x-delivery-limit: 4.x's 20
    publish_dead(spec.dead_name, DEAD_TASKS)
    previews = []
    for _ in range(PREVIEWS):
        # A preview counts the ready tasks (a passive declare): the last one's give-back (a
        # nack, then its close) may still be on its way into the quorum queue under load
        # (seen once on 3.10: 3 of 5). Previews one after another, not overlapping: wait.
        wait_for(lambda: queue_state(spec.dead_name) == (DEAD_TASKS, 0),
                 what="the last preview's tasks back in .dead")
        previews.append(move_dead(queue, dry_run=True, rewrite=rewrite))
    assert previews == [DEAD_TASKS] * PREVIEWS
    assert move_dead(queue, dry_run=False) == DEAD_TASKS
    assert sorted(body for _props, body in consume_all(queue)) == [
        f"dead {number}".encode() for number in range(1, DEAD_TASKS + 1)]


def test_dead_and_retry_queues_we_make_have_no_delivery_limit_on_4x(queue, logs, tmp_path):
    """On 4.x the quorum companions are made with x-delivery-limit -1 (no limit: 30 returns
    by closed channels lose nothing); on 3.x without it (3.10 reads -1 as "drop at the first
    return", measured). The task queue keeps the tutorial's arguments either way."""
    spec = QueueSpec(queue)
    worker = start_worker("--queue", queue, "--exit-when-idle", "0.5", log_dir=logs,
                          out=tmp_path / "worker.out")
    assert worker.wait(timeout=90) == 0, (tmp_path / "worker.out").read_text()
    four = broker_version() >= (4, 0)
    for name in (spec.dead_name, spec.retry_name):
        with_limit = redeclare_refusal(name, {**companion(spec, name), "x-delivery-limit": -1})
        without = redeclare_refusal(name, companion(spec, name))
        assert (with_limit is None) == four, with_limit
        assert (without is None) != four, without
    assert redeclare_refusal(queue, {"x-queue-type": "quorum"}) is None  # the tutorial's
    publish_dead(spec.dead_name, 1)
    for _ in range(PREVIEWS):  # returned by closing the channel, the worst kind of return
        connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
        method, _props, _body = connection.channel().basic_get(spec.dead_name)
        connection.close()
        assert method is not None
    assert len(consume_all(spec.dead_name)) == 1


def companion(spec: QueueSpec, name: str) -> dict:
    """The arguments config.py gives a quorum companion (3.10+), without a delivery limit."""
    return spec.companion_arguments(name, "quorum", (3, 10))


def test_worker_says_when_an_existing_dead_queue_has_the_broker_limit(queue, logs, tmp_path):
    """A 4.x quorum .dead without x-delivery-limit (made by 3.x or an older version): the
    worker says so in one line, with the policy that lifts it, and works on; 3.x has no
    default limit, so nothing to say there."""
    spec = QueueSpec(queue)
    declare(queue, {"x-queue-type": "quorum"})
    declare(spec.dead_name, {"x-queue-type": "quorum"})
    out = tmp_path / "worker.out"
    worker = start_worker("--queue", queue, "--exit-when-idle", "0.5", log_dir=logs, out=out)
    assert worker.wait(timeout=90) == 0, out.read_text()
    said = [line for line in out.read_text().splitlines() if "default delivery limit" in line]
    if broker_version() >= (4, 0):
        assert len(said) == 1 and spec.dead_name in said[0] and "set_policy" in said[0], said
    else:
        assert said == []


# --- 3. 4.x's words and signals -------------------------------------------------------------------
@pytest.mark.parametrize("reply_text", [
    "NOT_FOUND - home node 'rabbit@b' of durable queue 'q' in vhost '/' is down or inaccessible",
    "NOT_FOUND - queue 'q' in vhost '/' process is stopped by supervisor",
    "NOT_FOUND - queue 'q' in vhost '/' has crashed and failed to restart",
])
def test_a_queue_that_cannot_serve_is_told_apart_in_3x_and_4x_words(reply_text):
    """The texts of rabbit_amqqueue (3.x; 4.3.6's beam holds all three) for a queue that exists
    on a node that is down: waited for, never taken for a missing queue."""
    assert queue_unavailable(404, reply_text) == reply_text.split(" - ", 1)[1]


def test_a_missing_queue_is_not_a_node_down():
    assert queue_unavailable(404, "NOT_FOUND - no queue 'q' in vhost '/'") is None
    assert queue_unavailable(406, "PRECONDITION_FAILED - home node") is None


CONSUMER_TIMEOUT_MS = 2000
SLOW_TASK = "slow" + "." * 40  # 10 s at 0.25 s a dot: longer than any timeout here


@pytest.fixture(scope="module")
def timeout_node():
    """A throwaway node whose consumer timeout is 1 s (rabbitmq.conf) and checked every 0.5 s
    (channel_tick_interval, 60 s by default)."""
    if not shutil.which("rabbitmq-server"):
        pytest.fail("rabbitmq-server is not installed; this test needs it", pytrace=False)
    broker = ThrowawayBroker(["consumer_timeout = 1000"]).start()
    assert broker.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")\
        .returncode == 0
    yield broker
    broker.cleanup()


def outlast(queue: str, url: str, logs, tmp_path) -> tuple[str, list]:
    """A task longer than the consumer timeout, a quick one behind it, one worker with
    --delivery-limit 2: (the worker's output, what is in .dead)."""
    run = run_script("emitter_of_tasks.py", "--queue", queue, "--url", url, "--file",
                     str(write_csv(tmp_path / "tasks.csv", [SLOW_TASK, "quick."])),
                     log_dir=logs)
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "worker.out"
    worker = start_worker("--queue", queue, "--url", url, "--seconds-per-dot", "0.25",
                          "--delivery-limit", "2", "--exit-when-idle", "3", log_dir=logs,
                          out=out)
    assert worker.wait(timeout=180) == 0, out.read_text()
    return out.read_text(), consume_all(QueueSpec(queue).dead_name, url)


def assert_dead_at_the_timeout(text: str, dead: list) -> None:
    assert "consumer timeout" in text and "queue deleted" not in text, text
    assert "done row 2" in text, text
    assert [body for _props, body in dead] == [SLOW_TASK.encode()], text
    reason = dead[0][0].headers["x-death-reason"]
    reason = reason.decode() if isinstance(reason, bytes) else reason
    assert "consumer timeout" in reason and "2 times" in reason, reason


def test_a_task_that_outlasts_the_consumer_timeout_is_dead_lettered(queue, logs, tmp_path):
    """A queue's own consumer timeout (x-consumer-timeout, 3.12+): on 4.3 the broker cancels
    the consumer and takes the task back without counting it. The worker says it was a
    consumer timeout, subscribes again, counts the returns itself and dead-letters the task at
    --delivery-limit with that reason; the task behind it is done."""
    if broker_version() < (3, 12):
        pytest.skip("a queue's own consumer timeout (x-consumer-timeout) needs RabbitMQ 3.12+; "
                    "3.10 accepts the argument and ignores it (measured)")
    declare(queue, {"x-queue-type": "quorum", "x-consumer-timeout": CONSUMER_TIMEOUT_MS})
    assert_dead_at_the_timeout(*outlast(queue, MAIN_URL, logs, tmp_path))


def test_a_task_that_outlasts_the_node_wide_consumer_timeout_is_dead_lettered(
        timeout_node, logs, tmp_path):
    """rabbitmq.conf's consumer_timeout. On 3.x it closes the channel ("delivery
    acknowledgement on channel N timed out"), and a classic queue counts no delivery: the
    worker counts it, and dead-letters the task at --delivery-limit instead of running it
    forever. 4.3 does not enforce it on a classic queue (nothing in 180 s with 1 s, measured):
    there a quorum queue, whose returns at the timeout (a basic.cancel) are not counted either."""
    queue = f"test.outlast-node-wide.{uuid.uuid4().hex[:8]}"
    four = broker_version(timeout_node.url) >= (4, 0)
    declare(queue, {"x-queue-type": "quorum"} if four else {}, timeout_node.url)
    assert_dead_at_the_timeout(*outlast(queue, timeout_node.url, logs, tmp_path))


def test_a_deleted_queue_is_said_as_such_and_the_worker_takes_tasks_again(queue, logs,
                                                                           tmp_path):
    """The broker cancels the subscription of a deleted queue (no task in hand): the worker
    says so, makes the queue again and subscribes again, never a live worker that consumes
    nothing; a task published afterwards is done."""
    out = tmp_path / "worker.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "0.01", log_dir=logs, out=out)
    wait_for(lambda: consumers(queue) == 1, timeout=90, what="the worker's subscription")
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    connection.channel().queue_delete(queue)
    connection.close()
    wait_for(lambda: "queue deleted, or its node went away" in out.read_text(), timeout=90,
             what="the worker's line about the cancel")
    wait_for(lambda: consumers(queue) == 1, timeout=90, what="a new subscription")
    run = run_script("emitter_of_tasks.py", "--queue", queue, "--url", MAIN_URL, "--file",
                     str(write_csv(tmp_path / "tasks.csv", ["after."])), log_dir=logs)
    assert run.returncode == 0, run.stdout + run.stderr
    wait_for(lambda: "done row 1" in out.read_text(), timeout=90, what="the task done")
    worker.terminate()
    assert worker.wait(timeout=60) == 0, out.read_text()
    assert "consumer timeout" not in out.read_text()
