"""Resource alarms on a throwaway node: workers keep taking, doing and acking tasks while the
broker blocks publishers (their publishing has a connection of its own), the emitter waits and
finishes, the report keeps working, and nothing is lost."""

from __future__ import annotations

import time

import pytest

from tests.brokers import ctl
from tests.helpers import (
    consume_all,
    consumers,
    done_rows,
    queue_state,
    run_script,
    start_script,
    start_worker,
    wait_for,
    write_csv,
)


@pytest.fixture(scope="module")
def alarm_node():
    from tests.conftest import _node

    broker = _node([])
    yield broker
    broker.cleanup()


def alarms(node) -> str:
    return ctl(node.node, "eval", "rabbit_alarm:get_alarms().").stdout


def set_alarm(node, kind: str) -> None:
    if kind == "disk":
        assert ctl(node.node, "set_disk_free_limit", "100000GB").returncode == 0
    else:
        assert ctl(node.node, "set_vm_memory_high_watermark", "0.00001").returncode == 0
    wait_for(lambda: ("disk" if kind == "disk" else "memory") in alarms(node), timeout=30,
             interval=0.3, what=f"the {kind} alarm")


def clear_alarm(node, kind: str) -> None:
    if kind == "disk":
        ctl(node.node, "set_disk_free_limit", "50MB")
    else:
        ctl(node.node, "set_vm_memory_high_watermark", "0.4")
    wait_for(lambda: "resource_limit" not in alarms(node), timeout=60, interval=0.3,
             what="the alarm to clear")


@pytest.mark.parametrize("kind", ["disk", "memory"])
def test_workers_drain_through_an_alarm_and_the_emitter_waits(kind, alarm_node, logs, tmp_path):
    node = alarm_node
    queue = f"alarm_{kind}_q"
    first = write_csv(tmp_path / "first.csv", [f"first {n}." for n in range(300)])
    later = write_csv(tmp_path / "later.csv", [f"later {n}." for n in range(20)])
    outs = [tmp_path / f"w{n}.out" for n in range(2)]
    workers = [start_worker("--url", node.url, "--queue", queue, "--name", f"w{n}",
                            "--seconds-per-dot", "0.05", "--exit-when-idle", "3",
                            log_dir=logs, out=out) for n, out in enumerate(outs)]
    wait_for(lambda: consumers(queue, node.url) == 2, what="2 workers")
    assert run_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue, "--file",
                      str(first), log_dir=logs).returncode == 0
    wait_for(lambda: len(done_rows(*outs)) >= 30, what="work under way")
    emitter_out = tmp_path / "e.out"
    set_alarm(node, kind)
    try:
        ready_at_alarm = queue_state(queue, node.url)[0]
        done_at_alarm = len(done_rows(*outs))
        emitter = start_script("emitter_of_tasks.py", "--url", node.url, "--queue", queue,
                               "--file", str(later), log_dir=logs, out=emitter_out)
        time.sleep(4)
        ready_now = queue_state(queue, node.url)[0]
        assert ready_now < ready_at_alarm - 40, ("workers drain during the alarm",
                                                 ready_at_alarm, ready_now)
        assert len(done_rows(*outs)) > done_at_alarm + 40
        status = run_script("task_report.py", "--url", node.url, "--queue", queue, "--status",
                            log_dir=logs, timeout=30)
        assert status.returncode == 0 and queue in status.stdout, status.stderr
        during = run_script("task_report.py", "--url", node.url, "--queue", queue,
                            "--reports-dir", str(tmp_path / "r"), log_dir=logs, timeout=30)
        assert during.returncode == 0, during.stdout + during.stderr  # collecting consumes only
        assert emitter.poll() is None, "the emitter waits while publishing is blocked"
        assert "blocking publishers" in emitter_out.read_text()
    finally:
        clear_alarm(node, kind)
    assert emitter.wait(timeout=60) == 0, emitter_out.read_text()
    assert "20 confirmed" in emitter_out.read_text()
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    done = done_rows(*outs)
    texts = {row for _, row in done}
    assert texts >= set(range(1, 301)), "every task of the first run done"
    assert sum(done.values()) >= 320, "and the 20 published during the alarm"
    assert queue_state(queue, node.url) == (0, 0)
    assert consume_all(queue + ".dead", node.url) == []
    for out in outs:
        text = out.read_text()
        assert text.count("the broker blocks publishing") <= 1, "the alarm said once"
    said = "".join(out.read_text() for out in outs)
    assert "the broker blocks publishing" in said and "the alarm is over" in said
    report = run_script("task_report.py", "--url", node.url, "--queue", queue, "--reports-dir",
                        str(tmp_path / "r"), log_dir=logs)
    assert report.returncode == 0, report.stderr
    assert "incomplete" not in report.stdout, "events sent after the alarm: the report is whole"
