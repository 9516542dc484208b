"""What reading the results record costs a worker, on a real broker (issue 29, items 1-3):
nothing for a task's first delivery, however many workers share the queue and however long
the record already is. Each worker says at exit what it read ("results record: …"). The
figures at 1 to 1,000 workers: bench/scale.py and docs/figures.md."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pika

from taskqueue.wire.messages import FIRST_PUBLISH, PUBLISHED_AGAIN, message_id, row_of
from taskqueue.wire.record import encode_group
from tests.helpers import (
    MAIN_URL,
    consume_all,
    consumers,
    run_script,
    start_worker,
    wait_for,
    write_csv,
)
from tests.stopping import all_settled, stop_when

READ_LINE = re.compile(r"\[(\S+)\] results record: (\d+) deliveries checked; (\d+) records read "
                       r"in (\d+) readings")


def record_reading(out: Path) -> tuple[int, int]:
    """(deliveries checked, records read) from a worker's exit line."""
    found = READ_LINE.search(out.read_text())
    assert found, out.read_text()[-600:]
    return int(found[2]), int(found[3])


def test_workers_sharing_a_run_read_none_of_each_others_records(queue, logs, tmp_path):
    """Three workers, 60 first deliveries: none is checked, and no worker reads the others'
    records (before: each read all 60, so the broker sent every record to every worker)."""
    outs = [tmp_path / f"w{n}.out" for n in range(3)]
    workers = [start_worker("--queue", queue, "--name", f"w{n}", log_dir=logs, out=out)
               for n, out in enumerate(outs)]
    wait_for(lambda: consumers(queue) == 3, what="3 consumers")
    csv = write_csv(tmp_path / "t.csv", [f"task {n}" for n in range(1, 61)])
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(csv),
                         log_dir=logs)
    assert emitted.returncode == 0, emitted.stderr
    assert stop_when(all_settled(outs, 60, queue), queue, workers, log_dir=logs,
                     what="the 60 tasks done") == [0, 0, 0]
    readings = [record_reading(out) for out in outs]
    assert all(checked == 0 for checked, _read in readings), readings
    # A probe or the first fence reads what others write while it waits (milliseconds).
    assert all(read < 20 for _checked, read in readings), readings


def test_a_worker_starts_without_reading_a_long_record_of_its_run(queue, logs, tmp_path):
    """20,000 records of the run already in the stream: a new worker takes the run's next
    task without reading them (before: it read the whole run first, 115 s at 1M)."""
    emitted = run_script("emitter_of_tasks.py", "--queue", queue, "--file",
                         str(write_csv(tmp_path / "t.csv", ["the next one"])), log_dir=logs)
    assert emitted.returncode == 0, emitted.stderr
    run = re.search(r"\(run (\S+)\)", emitted.stdout)[1]
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for start in range(2, 20_002, 500):  # as workers would have written them: in groups
        channel.basic_publish("", f"{queue}.results", encode_group([
            {"kind": "task", "outcome": "done", "run_id": run, "worker": "earlier",
             "message_id": message_id("t.csv", row, f"row {row}"), "finished": time.time()}
            for row in range(start, start + 500)]))
    connection.close()
    out = tmp_path / "w.out"
    worker = start_worker("--queue", queue, "--name", "w", "--exit-when-idle", "1.5",
                          log_dir=logs, out=out)
    assert worker.wait(timeout=120) == 0, out.read_text()[-600:]
    assert "done row 1," in out.read_text()
    assert record_reading(out) == (0, 0), "nothing of the run's history read"


def test_a_resumed_run_marks_only_the_rows_an_earlier_emitter_may_have_sent(queue, logs,
                                                                               tmp_path):
    """--resume types as published again (to be checked) only the rows through the horizon
    the interrupted emitter saved; the rows after it are first publishes (not checked)."""
    from taskqueue.emitter.resume import ResumeState

    path = write_csv(tmp_path / "t.csv", [f"job {n}" for n in range(1, 7)])
    run = "20261205T120000Z-resume"
    ResumeState(logs, str(path), queue).save(2, complete=False, run_id=run,
                                             published_through=4)
    result = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path),
                        "--resume", log_dir=logs)
    assert result.returncode == 0, result.stdout + result.stderr
    types = {row_of(properties.message_id): properties.type
             for properties, _body in consume_all(queue)}
    assert types == {3: PUBLISHED_AGAIN, 4: PUBLISHED_AGAIN, 5: FIRST_PUBLISH,
                     6: FIRST_PUBLISH}, types
