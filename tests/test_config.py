"""URLs, credentials, queue arguments, progress text: pure logic, no broker."""

from __future__ import annotations

import io
import logging

import pytest

from taskqueue.admin import admin_url
from taskqueue.broker.config import WAIT_TIERS, QueueSpec, broker_urls, mask_url, with_credentials
from taskqueue.broker.connection import Backoff
from taskqueue.emitter.progress import Progress
from taskqueue.emitter.stats import PublishStats
from taskqueue.errors import UserError


def test_url_precedence_cli_env_default():
    assert broker_urls(["amqp://h1"], {"RABBITMQ_URL": "amqp://h2"}) == ["amqp://h1"]
    assert broker_urls(None, {"RABBITMQ_URL": "amqp://h2, amqp://h3"}) == ["amqp://h2", "amqp://h3"]
    assert broker_urls(None, {}) == ["amqp://guest:guest@localhost:5672/%2F"]


@pytest.mark.parametrize("url", ["http://h", "amqp://", "amqp://u:secret@h:99999/", "amqp://h:x/"])
def test_bad_urls_are_refused_without_the_password(url):
    with pytest.raises(UserError) as caught:
        broker_urls([url], {})
    assert "secret" not in str(caught.value)


def test_mask_url_hides_only_the_password():
    assert mask_url("amqp://bob:s3cr%40t@host:5672/v") == "amqp://bob:***@host:5672/v"
    assert mask_url("amqp://host/") == "amqp://host/"
    assert "s3cret" not in mask_url("amqp://bob:s3cret@host:notaport/")


def test_credentials_file(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("alice:p@ss:word\n")
    url = with_credentials("amqp://guest:guest@h:5672/%2F", str(creds))
    assert url == "amqp://alice:p%40ss%3Aword@h:5672/%2F"
    creds.write_text("nocolon\n")
    with pytest.raises(UserError, match="USER:PASSWORD"):
        with_credentials("amqp://h/", str(creds))


def test_a_new_task_queue_gets_exactly_the_tutorials_arguments():
    assert QueueSpec("q").task_queue_arguments() == {"x-queue-type": "quorum"}  # auto
    assert QueueSpec("q", "quorum").task_queue_arguments() == {"x-queue-type": "quorum"}
    assert QueueSpec("q", "classic").task_queue_arguments() == {}
    assert QueueSpec("q").all_queues == ["q", "q.retry", "q.dead", "q.urgent"]  # no .events (0.4)
    assert QueueSpec("q").everything == [  # the rate limit's (made when first used) too
        "q", "q.retry", "q.dead", "q.urgent", "q.urgent.retry", "q.ratelimit",
        *(f"q.wait.{n}s" for n in WAIT_TIERS), "q.events", "q.results", "q.control"]


def test_companions_follow_the_task_queues_type():
    spec = QueueSpec("q")
    retry = spec.companion_arguments("q.retry", "quorum", (3, 10, 8))
    assert retry["x-queue-type"] == "quorum" and retry["x-dead-letter-routing-key"] == "q"
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert "x-queue-type" not in spec.companion_arguments("q.retry", "quorum", (3, 9, 0)), \
        "quorum queues take message TTL only from 3.10"
    assert spec.companion_arguments("q.dead", "quorum", (4, 0)) == {"x-queue-type": "quorum"}
    assert spec.companion_arguments("q.dead", "classic", (4, 0)) == {}


def test_the_results_stream_keeps_weeks_and_its_retention_can_be_set():
    arguments = QueueSpec("q").results_arguments()
    assert arguments["x-queue-type"] == "stream"
    assert arguments["x-max-age"] == "30D" and arguments["x-max-length-bytes"] == 20 * 10**9
    small = QueueSpec("q", results_max_age="12h", results_max_bytes=50_000_000)
    assert small.results_arguments()["x-max-age"] == "12h"
    assert small.results_arguments()["x-stream-max-segment-size-bytes"] == 50_000_000


def test_run_ids_say_when_the_run_began():
    from taskqueue.wire.record import CLOCK_SKEW, LEGACY_SLACK, new_run_id, run_began

    run = new_run_id(1_764_583_200.0, "ab12cd")
    assert run == "20251201T100000Z-ab12cd"
    assert run_began(run) == 1_764_583_200.0 - CLOCK_SKEW
    assert run_began("20251201-100000-ab12cd") == 1_764_583_200.0 - LEGACY_SLACK
    assert run_began("") is None and run_began("someone-else's") is None


def test_a_refusal_names_the_queue_type_or_an_argument():
    from taskqueue.broker.topology import read_refusal

    text = ("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': "
            "received 'classic' but current is 'quorum'")
    assert read_refusal(text) == ("x-queue-type", "quorum")
    text = ("inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received none but "
            "current is the value '5' of type 'signedint'")
    assert read_refusal(text) == ("x-delivery-limit", 5)
    text = ("inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value "
            "'quorum' of type 'longstr' but current is none")
    assert read_refusal(text) == ("x-queue-type", None)


def test_admin_url_never_has_the_password():
    assert admin_url("amqp://u:secret@rabbit.example:5672/%2F") == \
        "http://rabbit.example:15672/#/queues"
    assert admin_url("amqps://h/", None).startswith("https://h:15672")
    assert admin_url("amqp://h/", "http://x:1/") == "http://x:1/"


def test_backoff_grows_and_is_capped():
    backoff = Backoff(first=0.5, cap=4)
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(0.25 <= d <= 4 for d in delays)
    assert max(delays[4:]) > 1.0
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_progress_on_a_non_terminal_has_no_control_characters():
    stream = io.StringIO()
    log = logging.getLogger("progress-test")
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    progress = Progress(log, total=10, stream=io.StringIO())
    stats = PublishStats(read=5, confirmed=4)
    progress.update(stats, force=True)
    progress.done()
    text = stream.getvalue()
    assert "4 confirmed" in text and "of 10" in text
    assert not any(ord(ch) < 32 and ch != "\n" for ch in text)
    terminal_bar = progress.bar(stats)
    assert terminal_bar.startswith("[############")
