"""Fixtures: the real main broker (its absence fails the run), a unique queue per test that
is deleted afterwards, and throwaway broker nodes for fault tests."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pika
import pytest

from tests.brokers import ThrowawayBroker
from tests.helpers import MAIN_URL, delete_queues, kill_leftovers


@pytest.fixture(scope="session")
def main_broker() -> str:
    """The broker on 127.0.0.1:5672. Missing, it fails the tests (never skips them)."""
    try:
        pika.BlockingConnection(pika.URLParameters(MAIN_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"no RabbitMQ on 127.0.0.1:5672 ({exc!r}); start it: rabbitmq-server -detached",
                    pytrace=False)
    return MAIN_URL


@pytest.fixture
def queue(main_broker: str, request: pytest.FixtureRequest) -> str:
    """A fresh queue name on the main broker; it and its companions are deleted afterwards."""
    name = f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}"
    yield name
    kill_leftovers()
    delete_queues(name)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Every background script a test started is gone when the test ends."""
    yield
    kill_leftovers()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


def _node(conf: list[str]) -> ThrowawayBroker:
    if not shutil.which("rabbitmq-server"):
        pytest.fail("rabbitmq-server is not installed; fault tests need it", pytrace=False)
    return ThrowawayBroker(conf).start()


@pytest.fixture(scope="module")
def node():
    """A throwaway broker node the tests of a module may restart or stop (each test uses its
    own queue, and leaves the node running)."""
    broker = _node([])
    yield broker
    broker.cleanup()


@pytest.fixture(scope="module")
def heartbeat_node():
    """A throwaway node that asks clients for a 2 s heartbeat."""
    broker = _node(["heartbeat = 2"])
    yield broker
    broker.cleanup()
