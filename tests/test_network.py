"""A network path that goes silent (no FIN, no RST: bytes just stop) between our scripts and a
throwaway node: heartbeats notice it, the scripts reconnect once the path is back, and the
work goes on with nothing lost."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from tests.helpers import (
    consume_all,
    consumers,
    done_counts,
    done_rows,
    queue_state,
    recorded,
    run_script,
    settled_rows,
    start_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.proxy import SilentProxy
from tests.stopping import every_row_settled, stop_when

LOST = re.compile(r"^(\d\d:\d\d:\d\d) WARNING +connection to .* lost", re.MULTILINE)


@pytest.fixture
def proxy(node):
    proxy = SilentProxy(node.port)
    yield proxy
    proxy.close()


def lost_at(text: str) -> float | None:
    """When the script said its connection was lost (today, second resolution)."""
    match = LOST.search(text)
    if not match:
        return None
    clock = datetime.strptime(match[1], "%H:%M:%S").time()
    return datetime.combine(datetime.now().date(), clock).timestamp()


def test_workers_notice_a_silent_path_and_go_on(node, proxy, logs, tmp_path):
    queue = "silent_workers_q"
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
    csv = write_csv(tmp_path / "t.csv", [f"task {n}." for n in range(300)])
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    workers = [start_worker("--url", url, "--heartbeat", "2", "--queue", queue, "--name",
                            f"w{n}", "--seconds-per-dot", "0.05", "--connect-timeout", "60",
                            log_dir=logs, out=out)
               for n, out in enumerate(outs)]  # no idle exit: they run before the publish
    wait_for(lambda: consumers(queue, node.url) == 3, what="3 workers")
    assert run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                      str(csv), log_dir=logs).returncode == 0
    wait_for(lambda: len(done_rows(*outs)) >= 45, what="work under way")
    proxy.go_silent()
    wait_for(lambda: all(lost_at(out.read_text()) for out in outs), timeout=20, interval=0.2,
             what="every worker noticing the silence")
    detection = [lost_at(out.read_text()) - int(proxy.silent_since) for out in outs]
    assert max(detection) <= 15, detection  # heartbeat 2 s (pika checks every 2 + 5 s)
    proxy.drop_old()
    after_fault = done_counts(*outs)
    assert stop_when(every_row_settled(outs, 300, queue, node.url), queue, workers,
                     log_dir=logs, url=node.url, what="every task settled") == [0, 0, 0]
    at_end = done_counts(*outs)
    assert all(at_end[f"w{n}"] > after_fault[f"w{n}"] for n in range(3)), \
        ("every worker did tasks after the path came back", after_fault, at_end)
    assert settled_rows(*outs) == set(range(1, 301)), "no task lost"
    assert sorted(recorded(queue, node.url)) == list(range(1, 301)), "every outcome recorded"
    assert queue_state(queue, node.url) == (0, 0)
    assert consume_all(queue + ".dead", node.url) == []


def test_the_emitter_notices_a_silent_path_and_republishes(node, proxy, logs, tmp_path):
    from collections import Counter

    from taskqueue.wire.messages import row_of

    queue = "silent_emitter_q"
    total, window = 20_000, 1000
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
    csv = write_csv(tmp_path / "t.csv", [f"row {n}." for n in range(total)])
    out = tmp_path / "e.out"
    emitter = start_script("emitter_of_tasks.py", "--url", url, "--heartbeat", "2", "--queue",
                           queue, "--file", str(csv), "--confirm-window", str(window),
                           log_dir=logs, out=out)
    wait_for(lambda: (queue_state(queue, node.url) or (0, 0))[0] > 2000, interval=0.01,
             what="publishing under way")
    proxy.go_silent()
    wait_for(lambda: lost_at(out.read_text()), timeout=20, interval=0.2, what="detection")
    time.sleep(1)
    proxy.drop_old()
    assert emitter.wait(timeout=120) == 0, out.read_text()
    text = out.read_text()
    assert "published again after a connection loss" in text
    rows = Counter(row_of(p.message_id) for p, _ in consume_all(queue, node.url))
    assert set(rows) == set(range(1, total + 1)), "every row is in the queue"
    duplicates = sum(rows.values()) - total
    assert duplicates <= window, duplicates
    assert re.search(rf"{total} rows read, {total} confirmed", text)
