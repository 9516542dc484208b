"""Beyond one broker: a 3-node cluster with a quorum queue, node failure in mid-run, fail-over
across a URL list, a classic queue whose node is down, and the delivery limit (counted by the
quorum queue, acted on by the worker) for tasks that kill their worker."""

from __future__ import annotations

import concurrent.futures
import json
import uuid

import pytest

from tests.brokers import ThrowawayBroker, ctl
from tests.helpers import (
    consume_all,
    done_counts,
    done_rows,
    queue_settles_at,
    queue_state,
    run_script,
    settled_rows,
    start_worker,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    """Three nodes on one machine, joined into one cluster."""
    suffix = uuid.uuid4().hex[:6]  # two runs at once must not share node names
    nodes = [ThrowawayBroker(name=f"tqcluster{n}-{suffix}") for n in range(3)]
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.start(), nodes))
        for node in nodes[1:]:
            node.stop_app()
            joined = ctl(node.node, "join_cluster", nodes[0].node)
            assert joined.returncode == 0, joined.stderr
            node.start_app()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


def running_nodes(node: ThrowawayBroker) -> list[str]:
    out = ctl(node.node, "cluster_status", "--formatter", "json").stdout
    return sorted(json.loads(out)["running_nodes"])


def test_quorum_queue_survives_losing_a_node_and_every_worker_goes_on(cluster, logs,
                                                                      tmp_path):
    """600 tasks, 3 workers each on its own node; the node the emitter declared the queues on
    (and the first worker's) is stopped mid-run. Every worker must do tasks afterwards."""
    queue = "cluster_tasks"
    csv = write_csv(tmp_path / "t.csv", [f"task {n}." for n in range(600)])
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--queue-type", "quorum",
                      *[arg for node in cluster for arg in ("--url", node.url)], "--file",
                      str(csv), log_dir=logs).returncode == 0
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    workers = []
    for n, out in enumerate(outs):
        ring = cluster[n:] + cluster[:n]  # each worker starts on a different node
        urls = [arg for node in ring for arg in ("--url", node.url)]
        workers.append(start_worker("--queue", queue, "--queue-type", "quorum", *urls,
                                    "--name", f"w{n}", "--seconds-per-dot", "0.03",
                                    "--exit-when-idle", "8", log_dir=logs, out=out))
    wait_for(lambda: len(done_rows(*outs)) >= 60, timeout=60, what="work under way")
    stopped = cluster[0]
    stopped.stop_app()
    after_fault = done_counts(*outs)
    try:
        assert [w.wait(timeout=180) for w in workers] == [0, 0, 0], "workers end alive"
        at_end = done_counts(*outs)
        assert all(at_end[f"w{n}"] > after_fault[f"w{n}"] for n in range(3)), \
            ("every worker did tasks after the node was stopped", after_fault, at_end)
        assert "connected again" in outs[0].read_text(), "w0 failed over"
        # A task whose record landed as its node went (the confirm and the ack lost with it)
        # is skipped by the worker that gets it again: done once, and not lost.
        assert settled_rows(*outs) == set(range(1, 601)), "no task lost"
        assert queue_state(queue, cluster[1].url) == (0, 0)
    finally:
        stopped.start_app()
    assert running_nodes(cluster[0]) == sorted(node.node for node in cluster), "cluster whole"


def test_a_task_that_keeps_killing_workers_is_dead_lettered(cluster, logs, tmp_path):
    queue = "poison_quorum"
    url = cluster[0].url
    assert run_script("emitter_of_tasks.py", "--url", url, "--queue", queue, "--queue-type",
                      "quorum", "--message", "poison pill", "--message", "fine.",
                      log_dir=logs).returncode == 0
    exits = []
    for attempt in range(6):  # --in-process: no isolation, so the poison kills the worker
        worker = start_worker("--url", url, "--queue", queue, "--delivery-limit", "2",
                              "--handler", "tests.handlers:die_on_poison", "--in-process",
                              "--exit-when-idle", "1.5", log_dir=logs,
                              out=tmp_path / f"w{attempt}.out")
        exits.append(worker.wait(timeout=60))
        if exits[-1] == 0:
            break
    assert exits[-1] == 0 and exits.count(70) >= 2, exits
    dead = consume_all(queue + ".dead", url)
    assert [body for _, body in dead] == [b"poison pill"]
    queue_settles_at(queue, (0, 0), url)


def test_worker_fails_over_to_the_next_url(cluster, logs, tmp_path):
    queue = "failover_q"
    out = tmp_path / "w.out"
    assert run_script("emitter_of_tasks.py", "--url", cluster[2].url, "--queue", queue,
                      "--message", "x.", log_dir=logs).returncode == 0  # before: no race
    worker = start_worker("--url", "amqp://guest:guest@127.0.0.1:9/%2F", "--url",
                          cluster[2].url, "--queue", queue, "--exit-when-idle", "1.5",
                          "--seconds-per-dot", "0", log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0
    text = out.read_text()
    assert "cannot reach amqp://guest:***@127.0.0.1:9" in text
    assert f"connected to amqp://guest:***@127.0.0.1:{cluster[2].port}" in text
    assert "done row 1" in text


def test_a_second_queue_type_is_refused_clearly(cluster, logs):
    url = cluster[0].url
    assert run_script("emitter_of_tasks.py", "--url", url, "--queue", "typed_q", "--message",
                      "x", "--queue-type", "classic", log_dir=logs).returncode == 0
    result = run_script("listening_worker.py", "--url", url, "--queue", "typed_q",
                        "--queue-type", "quorum", log_dir=logs)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "already exists as a classic queue, not quorum" in result.stderr
    assert "--queue-type" in result.stderr and result.stderr.count("\n") == 1




def test_a_classic_queue_whose_node_is_down_is_a_clear_bounded_error(cluster, logs, tmp_path):
    """A classic queue lives on one node: with that node down the queue cannot be used. The
    worker says so and gives up after --connect-timeout (exit 3), never a silent loop."""
    home = cluster[2]
    assert run_script("emitter_of_tasks.py", "--url", home.url, "--queue", "homeless_q",
                      "--queue-type", "classic", "--message", "x", log_dir=logs).returncode == 0
    home.stop_app()
    try:
        result = run_script("listening_worker.py", "--url", cluster[0].url, "--url",
                            cluster[1].url, "--queue", "homeless_q", "--connect-timeout", "6",
                            "--exit-when-idle", "1", log_dir=logs, timeout=60)
    finally:
        home.start_app()
    assert result.returncode == 3, result.stdout + result.stderr
    # Our words, the same on 3.x ("home node ... is down") and 4.x ("process is stopped by
    # supervisor"); the last line keeps why (before: our own close's 'Normal shutdown').
    said = "queue 'homeless_q' cannot be used: its node is down (RabbitMQ: "
    assert said in result.stdout and "waiting for its node" in result.stdout, result.stdout
    assert "could not use the queues within 6 s" in result.stderr
    assert said in result.stderr and "Normal shutdown" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
