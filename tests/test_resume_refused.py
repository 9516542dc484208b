"""--resume after rows the broker refused (nack): exactly those rows are published again, then
the rows after the last one the earlier run read; the rows it had accepted are not sent twice.

A classic queue with ``x-max-length-bytes`` and ``x-overflow: reject-publish`` refuses a message
that would take it over the byte limit and takes smaller ones after it: with a filler message in
the queue, the long rows are refused and the short rows between them accepted (the broker
decides in publish order, so which rows are refused does not depend on timing).
"""

from __future__ import annotations

from pathlib import Path

import pika

from tests.helpers import MAIN_URL, RUN_SAID, drain, run_script, write_csv

LIMIT = 1_000  # bytes the queue holds
FILLER = 740  # bytes in the queue before the first run: a long row (300) no longer fits
LONG_ROWS = (3, 17, 30)


def row_text(row: int) -> str:
    if row in LONG_ROWS:
        return f"long {row:02d} ".ljust(300, "x")
    return f"row {row:02d}"  # 6 bytes: 37 of them fit next to the filler


def declare_capped(queue: str, filler: int = 0, max_length: int | None = None) -> None:
    """The task queue, capped (bytes, or messages if *max_length*), refusing what goes over;
    with a confirmed *filler* message of that many bytes in it."""
    connection = pika.BlockingConnection(pika.URLParameters(MAIN_URL))
    try:
        channel = connection.channel()
        cap = {"x-max-length": max_length} if max_length is not None else \
            {"x-max-length-bytes": LIMIT}
        channel.queue_declare(queue, durable=True,
                              arguments={**cap, "x-overflow": "reject-publish"})
        if filler:
            channel.confirm_delivery()
            channel.basic_publish("", queue, b"f" * filler,
                                  pika.BasicProperties(delivery_mode=2, message_id="filler"))
    finally:
        connection.close()


def emit(queue: str, csv: Path, logs: Path, *extra: str):
    return run_script("emitter_of_tasks.py", "--queue", queue, "--queue-type", "classic",
                      "--file", str(csv), *extra, log_dir=logs, timeout=120)


def test_resume_publishes_only_the_refused_rows_then_the_rest(queue, logs, tmp_path):
    declare_capped(queue, filler=FILLER)
    csv = write_csv(tmp_path / "b2.csv", [row_text(row) for row in range(1, 41)])
    first = emit(queue, csv, logs)
    said_first = first.stdout + first.stderr
    assert first.returncode == 5, said_first[-3000:]
    assert "40 rows read, 37 confirmed, 3 rejected" in said_first, said_first[-3000:]
    run = RUN_SAID.search(said_first)
    assert run, said_first[-3000:]

    accepted = drain(queue)  # room for the refused rows
    assert [body.decode() for _p, body in accepted] == \
        ["f" * FILLER] + [row_text(row) for row in range(1, 41) if row not in LONG_ROWS]
    with csv.open("a", encoding="utf-8") as more:  # the file grew meanwhile
        more.write("row 41\nrow 42\n")

    second = emit(queue, csv, logs, "--resume")
    said = second.stdout + second.stderr
    again = drain(queue)
    assert [body.decode() for _p, body in again] == \
        [row_text(3), row_text(17), row_text(30), "row 41", "row 42"], "only those, in order"
    assert {p.correlation_id for p, _b in accepted[1:] + again} == {run["run"]}, "the same run"
    ids = [properties.message_id for properties, _body in accepted[1:] + again]
    assert len(ids) == len(set(ids)) == 42, "every row once: none lost, none twice"
    assert second.returncode == 0, said[-3000:]
    assert "5 rows read, 5 confirmed, 0 rejected" in said, said[-3000:]

    # What each run says about it
    assert "publish again rows 3, 17, 30 (only those), then the rows after row 40" in \
        said_first, said_first[-3000:]
    assert (f"resuming {csv} (run {run['run']}): 3 refused row(s) published again (rows 3, "
            "17, 30), then the rows after row 40") in said, said[-3000:]
    assert "no earlier run" not in said


def test_more_refused_rows_than_kept_fall_back_to_the_watermark(queue, logs, tmp_path):
    declare_capped(queue, max_length=2)
    rows = 10_010
    csv = write_csv(tmp_path / "many.csv", [f"row {n}" for n in range(1, rows + 1)])
    first = emit(queue, csv, logs)
    said = first.stdout + first.stderr
    assert first.returncode == 5, said[-3000:]
    assert f"{rows} rows read, 2 confirmed, {rows - 2} rejected" in said, said[-3000:]
    assert "more than 10000 rows were refused: too many to keep one by one, so --resume " \
           "starts after row 2" in said, said[-3000:]
    assert len(drain(queue)) == 2

    second = emit(queue, csv, logs, "--resume")
    said = second.stdout + second.stderr
    assert "resuming" in said and "after row 2: every row up to it was confirmed" in said, \
        said[-3000:]
    assert f"{rows - 2} rows read" in said, said[-3000:]
