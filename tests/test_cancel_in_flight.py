"""A task on its way to a worker when it stops taking tasks (worker/lanes.py ``Intake.cancel``,
broker/cancels.py): sent by the broker before our basic.cancel reached it. pika 1.x rejects such
a delivery (requeue), and the worker closed its channel at once on a stop: either way it went
back counted as a delivery on a quorum queue (its --delivery-limit nearer; a task that never
ran). Now it comes to the worker, which gives it back as a confirmed copy (uncounted on 3.x;
on 4.3 a nack, uncounted there) and says so in its "on their way" line, and the stop waits for
the broker's answer to a round trip after the cancels (within its bound) before closing.

A ``HoldingProxy`` keeps the broker's bytes from the worker's consuming connection: the task's
delivery waits in it. SIGTERM is local (it needs nothing from the broker); once the broker has
our cancels (the queue has no consumer), the bytes flow again: the delivery, then the answer.
The next worker has ``--delivery-limit 1``: a task with one delivery counted is dead-lettered
unrun, so it runs the task only if the give-back counted none. (A pause cannot be shown this
way: its command comes on that same held connection. tests/test_fast_cancels.py shows it on a
real pika channel.)
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from taskqueue.broker.urgent import urgent_name
from tests.helpers import (
    MAIN_URL,
    emit_run,
    gate_files,
    queue_state,
    recorded,
    start_gated,
    wait_for,
)
from tests.proxy import HoldingProxy
from tests.test_give_back import ran

ON_THEIR_WAY = "gave 1 task(s) back to the queue that were on their way to us"


class Proxy(HoldingProxy):
    def release(self) -> None:
        """Let every held direction flow again (what was held goes on, in order)."""
        self._holds = frozenset()


def on_its_way(queue: str, tmp_path: Path, logs: Path, proxy: Proxy):
    """A one-slot worker through *proxy*, idle and subscribed; the broker's bytes to it held;
    one task sent to it (waiting in the proxy). Its output file, its process, the run id."""
    _runs, gate = gate_files(tmp_path)
    gate.touch()
    out = tmp_path / "first.out"
    first = start_gated(queue, "first", log_dir=logs, out=out, port=proxy.port)  # (a quorum
    # queue: it makes it; no task before, or a short one would make it subscribe twice:
    # look_ahead.py)
    wait_for(lambda: queue_state(queue) == (0, 1), timeout=60,
             what="the first worker subscribed, idle")
    proxy.hold(HoldingProxy.named("listening_worker first"), "client")  # broker -> worker
    run = emit_run("--queue", queue, "--message", "a", logs=logs)
    wait_for(lambda: queue_state(queue) == (0, 1), what="the task sent to the first worker")
    return out, first, run


def stopped_with_one_on_its_way(queue: str, tmp_path: Path, logs: Path,
                                then: Callable[[Proxy], None]) -> tuple[Path, str]:
    """``on_its_way``, then SIGTERM; once the broker has our cancels (sent together:
    <queue>.urgent's first; <queue>'s subscription stays counted while the delivery it sent is
    unacked; their answer waits in the proxy, behind the delivery), *then* (the proxy); the
    worker must leave with exit 0. Its output file and the run id."""
    proxy = Proxy(urlsplit(MAIN_URL).port)
    try:
        out, first, run = on_its_way(queue, tmp_path, logs, proxy)
        first.send_signal(signal.SIGTERM)
        wait_for(lambda: (queue_state(urgent_name(queue)) or (0, 0))[1] == 0,
                 what="our cancels at the broker")
        then(proxy)
        assert first.wait(timeout=120) == 0, out.read_text()[-3000:]
    finally:
        proxy.close()
    return out, run


def test_a_task_on_its_way_at_a_stop_goes_back_uncounted_and_runs_once(queue: str,
                                                                      logs: Path,
                                                                      tmp_path: Path):
    """(On 4.3 it goes back with a nack, which counts nothing there: the same holds.)"""
    out, run = stopped_with_one_on_its_way(queue, tmp_path, logs, Proxy.release)
    wait_for(lambda: queue_state(queue) == (1, 0), what="the task back in the queue")
    runs, _gate = gate_files(tmp_path)
    second_out = tmp_path / "second.out"
    second = start_gated(queue, "second", "--delivery-limit", "1", "--exit-when-idle", "1.5",
                         log_dir=logs, out=second_out)
    assert second.wait(timeout=60) == 0, second_out.read_text()[-3000:]
    text = second_out.read_text()
    assert "] dead-lettered" not in text, "its give-back was counted as a delivery:\n" + text
    assert ran(runs)["a"] == 1, text
    assert {row: fields["outcome"] for row, fields in recorded(queue, run=run).items()} == {
        1: "done"}
    assert queue_state(queue) == (0, 0) and queue_state(f"{queue}.dead") == (0, 0)
    said = out.read_text()  # the first worker's: why it went back, and when it stopped
    assert ON_THEIR_WAY in said, said[-3000:]
    assert "has not answered our cancel" not in said, said[-3000:]


def test_a_stop_waits_for_the_brokers_answer_within_its_bound_then_leaves(queue: str, logs: Path,
                                                                     tmp_path: Path):
    """The broker's answer never comes (held to the end): the worker stops all the same, after
    the bound, and says why (the task goes back with the close: the broker has it)."""
    out, _run = stopped_with_one_on_its_way(queue, tmp_path, logs, lambda _proxy: None)
    said = out.read_text()
    assert "[first] the broker has not answered our cancel within 2 s" in said, said[-3000:]
    wait_for(lambda: queue_state(queue) == (1, 0), what="the task back with the close")


def test_a_stop_waiting_for_the_answer_goes_on_when_the_connection_is_lost(queue: str,
                                                                          logs: Path,
                                                                          tmp_path: Path):
    """The broker goes away while the stop waits for its answer (a host shutting down stops
    the worker and the broker together): no answer comes now, the worker stops as it did before
    it waited (exit 0), rather than reconnecting to a broker that is gone until it gives up."""
    stopped_with_one_on_its_way(queue, tmp_path, logs, Proxy.close)  # (the answer with it)
    wait_for(lambda: queue_state(queue) == (1, 0), what="the task back with the connection")
