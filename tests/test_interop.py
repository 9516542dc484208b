"""Meeting users where they are: queues declared the way real peers declare them (today's
tutorial: quorum; older code: classic), other AMQP clients (Debian's amqp-tools, npm's amqplib),
and task lists saved from a spreadsheet."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pika
import pytest

from taskqueue.emitter.tasks import read_tasks
from tests.helpers import (
    MAIN_URL,
    ROOT,
    consume_all,
    done_rows,
    queue_state,
    run_script,
    start_worker,
    wait_for,
)

INTEROP = ROOT / "tests" / "interop"


def declare_like(queue: str, arguments: dict) -> None:
    """What the tutorial's new_task.py/worker.py do before anything else."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
    finally:
        connection.close()


@pytest.mark.parametrize(("arguments", "kind"), [({"x-queue-type": "quorum"}, "quorum"),
                                                 ({}, "classic")],
                         ids=["todays-tutorial", "older-tutorial"])
def test_our_scripts_with_defaults_use_a_queue_the_tutorial_made(arguments, kind, queue, logs,
                                                                 tmp_path):
    declare_like(queue, arguments)
    sent = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "one.",
                      "--message", "two.", log_dir=logs)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert f"queue {queue!r} exists: a {kind} queue, used as it is" in sent.stdout
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "0", "--exit-when-idle", "1.5",
                          log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    assert sorted(row for _, row in done_rows(out)) == [1, 2]
    declare_like(queue, arguments)  # and the tutorial's code can still declare it
    assert queue_state(queue) == (0, 0)


def test_a_queue_our_emitter_makes_is_the_one_todays_tutorial_declares(queue, logs):
    sent = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "from us.",
                      log_dir=logs)
    assert sent.returncode == 0 and f"created queue {queue!r} (quorum)" in sent.stdout
    declare_like(queue, {"x-queue-type": "quorum"})  # no PRECONDITION_FAILED
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1)
        method, _properties, body = channel.basic_get(queue)
        assert body == b"from us."
        channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()


def test_crash_loop_protection_on_a_queue_made_by_the_tutorial(queue, logs, tmp_path):
    """No queue arguments of ours: x-delivery-count, which quorum queues add, is what stops a
    task that kills every worker it reaches (here in-process, so it really kills them)."""
    declare_like(queue, {"x-queue-type": "quorum"})
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--message", "poison pill",
                      "--message", "fine", log_dir=logs).returncode == 0
    exits = []
    for attempt in range(5):
        worker = start_worker("--queue", queue, "--delivery-limit", "2", "--handler",
                              "tests.handlers:die_on_poison", "--in-process", "--exit-when-idle",
                              "1.5", log_dir=logs, out=tmp_path / f"w{attempt}.out")
        exits.append(worker.wait(timeout=60))
        if exits[-1] == 0:
            break
    assert exits == [70, 70, 0], exits
    dead = consume_all(queue + ".dead")
    assert [body for _, body in dead] == [b"poison pill"]
    assert "delivered 3 times without an ack" in dead[0][0].headers["x-death-reason"]
    assert queue_state(queue) == (0, 0)


def test_amqp_tools_publish_and_our_worker_does_it(queue, logs, tmp_path):
    assert shutil.which("amqp-publish"), "Debian's amqp-tools are needed (apt install amqp-tools)"
    assert run_script("emitter_of_tasks.py", "--queue", queue, "--message", "ours.",
                      log_dir=logs).returncode == 0  # makes the queue (quorum)
    published = subprocess.run(["amqp-publish", "--url", "amqp://guest:guest@127.0.0.1:5672", "-r",
                                queue, "-p", "-b", "from amqp-tools."],
                               capture_output=True, text=True, timeout=30)
    assert published.returncode == 0, published.stderr
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--seconds-per-dot", "0", "--exit-when-idle", "1.5",
                          log_dir=logs, out=out)
    assert worker.wait(timeout=60) == 0, out.read_text()
    text = out.read_text()
    assert "done row 1" in text and "done no row, id -" in text and "'from amqp-tools.'" in text


def node_worker_ready() -> Path:
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm are needed"
    if not (INTEROP / "node_modules" / "amqplib").exists():
        installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"],
                                   cwd=INTEROP, capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, installed.stderr
    return INTEROP / "worker.js"


def test_the_tutorials_node_worker_takes_what_our_emitter_publishes(queue, logs):
    worker_js = node_worker_ready()
    sent = run_script("emitter_of_tasks.py", "--queue", queue, "--message", "first.",
                      "--message", "second.", "--message", "third.", log_dir=logs)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    taken = subprocess.run(["node", str(worker_js), MAIN_URL, queue, "3"], capture_output=True,
                           text=True, timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.splitlines() == ["received first.", "received second.",
                                         "received third."]
    wait_for(lambda: queue_state(queue) == (0, 0), what="the queue drained")


def test_a_spreadsheets_csv_gives_the_texts_typed_in_the_cells(tmp_path):
    typed = ["Resize a.png, b.png...", 'He said "hi", then left.', "plain.", '"quoted".',
             "a, b", "Ünïcode, ok."]
    path = tmp_path / "saved.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, dialect="excel")
        for text in typed:
            writer.writerow([text])
        writer.writerow(["with an empty column after it, too", ""])
    texts = [task.text for task in read_tasks(str(path))]
    assert texts == [*typed, "with an empty column after it, too"]


def test_lines_that_are_not_one_quoted_cell_stay_as_written(tmp_path):
    path = tmp_path / "t.csv"
    lines = ['"a","b"', '"open only', 'tail "quote"', '"x" y', "bare, comma."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert [task.text for task in read_tasks(str(path))] == lines
