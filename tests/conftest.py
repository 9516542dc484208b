"""Fixtures: the real main broker (its absence fails the run), a unique queue per test that
is deleted afterwards, and throwaway broker nodes for fault tests. A run that leaves a
``test.`` queue on the main broker fails (``no_leftover_queues``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pika
import pytest

from tests.brokers import ThrowawayBroker
from tests.helpers import MAIN_URL, delete_queues, kill_leftovers, queue_names


@pytest.fixture(scope="session")
def main_broker() -> str:
    """The broker on 127.0.0.1:5672. Missing, it fails the tests (never skips them)."""
    try:
        pika.BlockingConnection(pika.URLParameters(MAIN_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"no RabbitMQ on 127.0.0.1:5672 ({exc!r}); start it: rabbitmq-server -detached",
                    pytrace=False)
    return MAIN_URL


LEFTOVERS: dict[str, object] = {}  # what no_leftover_queues found, for pytest_sessionfinish
TEST_PREFIX = "test."
SETTLE_SECONDS = 5.0  # exclusive queues of a command just ended may take a moment to go


@pytest.fixture(scope="session", autouse=True)
def no_leftover_queues():
    """At the end of the session, the ``test.`` queues on the main broker that were not there
    at its start; pytest_sessionfinish fails the run if there are any. Those of older runs are
    counted, not held against this one."""
    try:
        before = queue_names(TEST_PREFIX)
    except (OSError, subprocess.SubprocessError) as exc:
        LEFTOVERS["unchecked"] = f"{exc!r:.200}"
        yield
        return
    LEFTOVERS["before"] = before
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        try:
            left = queue_names(TEST_PREFIX) - before
        except (OSError, subprocess.SubprocessError) as exc:
            LEFTOVERS["unchecked"] = f"{exc!r:.200}"
            return
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    LEFTOVERS["left"] = sorted(left)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if LEFTOVERS.get("left") and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    write = terminalreporter.write_line
    if "unchecked" in LEFTOVERS:
        write(f"leftover queues not checked: rabbitmqctl could not list them "
              f"({LEFTOVERS['unchecked']})")
    if LEFTOVERS.get("before"):
        write(f"{len(LEFTOVERS['before'])} '{TEST_PREFIX}' queue(s) were on the main broker "
              "before this run (ignored); delete them with rabbitmqctl delete_queue")
    left = LEFTOVERS.get("left")
    if left:
        terminalreporter.write_sep("=", f"FAILED: {len(left)} '{TEST_PREFIX}' queue(s) left "
                                   "on the main broker", red=True)
        for name in left:
            write(f"  {name}")
        write("delete them in the test's teardown (tests.helpers.delete_queues), or use the "
              "queue fixture; another test session running at the same time leaves them too")


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


# Windows (scripts/windows.sh runs the suite under Windows python): a test that needs what
# Windows lacks skips there with the reason, found by the fixtures it uses, the names its code
# reads (its nested functions too) or its module. Nothing of this applies on POSIX.
WINDOWS_LACKS_MODULE = {
    "test_install": "installs into a POSIX venv (bin/) and runs the README's systemd unit",
    "test_partitions": "cuts nodes apart with iptables",
    "test_web_browser": "drives Debian's chromium",
}
WINDOWS_LACKS_NAME = {
    **dict.fromkeys(["SIGKILL", "SIGTERM", "SIGINT", "SIGSTOP", "SIGCONT", "killpg"],
                    "sends a POSIX signal (Windows has TerminateProcess and console events)"),
    **dict.fromkeys(["unacked", "queue_names", "ctl"], "asks rabbitmqctl (not on Windows)"),
    **dict.fromkeys(["openpty", "pty"], "needs a POSIX pseudo-terminal"),
    "Tmux": "drives tmux",
}


def names_read(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= names_read(constant)
    return names


def windows_lack(item: pytest.Item) -> str | None:
    """Why *item* cannot run on Windows, or None."""
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    if module in WINDOWS_LACKS_MODULE:
        return WINDOWS_LACKS_MODULE[module]
    for fixture in getattr(item, "fixturenames", ()):
        if fixture.endswith("node") or fixture in ("cluster", "proxy"):
            return f"starts a throwaway RabbitMQ node (rabbitmq-server; fixture {fixture})"
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    for name in sorted(names_read(code)) if code else ():
        if name in WINDOWS_LACKS_NAME:
            return f"{WINDOWS_LACKS_NAME[name]} ({name})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if sys.platform != "win32":
        return
    for item in items:
        if item.get_closest_marker("windows"):
            continue  # written for Windows (the tier's subset): it must run, never skip here
        reason = windows_lack(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not on Windows: {reason}"))
