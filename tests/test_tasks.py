"""CSV reading and dot counting: pure logic, no broker."""

from __future__ import annotations

import pytest

from taskqueue.emitter.tasks import CsvError, read_tasks, seconds_for, tasks_from_messages
from taskqueue.wire.messages import message_id, row_of

pytestmark = pytest.mark.windows  # the Windows tier runs this whole file (scripts/windows.sh)


def texts(path, **kwargs):
    return [(t.row, t.text) for t in read_tasks(str(path), **kwargs)]


def test_each_nonblank_line_is_a_task_exactly_as_written(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"Hello.\r\n\n   \nResize a.png, b.png...\n\"quoted\", too.\n")
    assert texts(path) == [(1, "Hello."), (4, "Resize a.png, b.png..."), (5, '"quoted", too.')]


def test_header_and_column_by_name_or_number(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,task\n1,"Resize a.png, b.png..."\n2,"two\nlines."\n3,\n')
    assert texts(path, header=True, column="task") == [(2, "Resize a.png, b.png..."),
                                                       (3, "two\nlines.")]
    assert texts(path, header=True, column="1") == [(2, "1"), (3, "2"), (5, "3")]


def test_unknown_column_names_the_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,task\n1,x\n")
    with pytest.raises(CsvError, match=r"no column 'job'.*columns: id, task"):
        list(read_tasks(str(path), header=True, column="job"))


def test_skip_through_resumes_after_a_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a\nb\nc\n")
    assert texts(path, skip_through=2) == [(3, "c")]


@pytest.mark.parametrize(("content", "message", "row"), [
    (b"", "has no tasks", 0),
    (b"\n  \n", "has no tasks", 0),
    (b"ok.\nbad \xff byte\n", r"line 2: not valid UTF-8 \(byte 0xff at column 5\)", 2),
    (b"ok.\nnul\0here\n", "line 2: contains a NUL byte", 2),
    (b"ok.\n" + b"x" * 100 + b"\n", "line 2: longer than 50 bytes", 2),
])
def test_bad_files_name_the_line(tmp_path, content, message, row):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    tasks = read_tasks(str(path), max_bytes=50)
    with pytest.raises(CsvError, match=message) as caught:
        list(tasks)
    assert caught.value.row == row
    assert "bad.csv" in str(caught.value)


def test_rows_before_a_bad_line_are_yielded_first(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"one.\ntwo.\n\xfe\n")
    tasks = read_tasks(str(path))
    assert [next(tasks).text, next(tasks).text] == ["one.", "two."]
    with pytest.raises(CsvError):
        next(tasks)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CsvError, match="not found; pass --file"):
        list(read_tasks(str(tmp_path / "nope.csv")))
    with pytest.raises(CsvError, match="is a directory"):
        list(read_tasks(str(tmp_path)))


def test_bom_is_dropped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfFirst.\n")
    assert texts(path) == [(1, "First.")]


def test_message_ids_are_stable_and_distinct():
    assert message_id("/a/t.csv", 1, "x") == message_id("/a/t.csv", 1, "x")
    assert message_id("/a/t.csv", 1, "x") != message_id("/a/t.csv", 2, "x")
    assert message_id("/a/t.csv", 1, "x").startswith("t.csv:1:")


def test_row_travels_inside_the_message_id():
    assert row_of(message_id("/a/b:c.csv", 12, "x")) == 12
    assert row_of("someone-else's-id") is None and row_of(None) is None


def test_messages_and_blank_message():
    assert [t.text for t in tasks_from_messages(["a.", "b.."])] == ["a.", "b.."]
    with pytest.raises(CsvError, match="--message number 2 is blank"):
        list(tasks_from_messages(["a", " "]))


def test_seconds_per_dot():
    assert seconds_for("Hello...", 1.0) == 3.0
    assert seconds_for("none", 1.0) == 0.0
    assert seconds_for("a.b.", 0.25) == 0.5


def test_a_large_file_is_streamed(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as handle:
        for number in range(200_000):
            handle.write(f"task {number}.\n")
    count = sum(1 for _ in read_tasks(str(path)))
    assert count == 200_000


def test_csv_errors_say_what_is_wrong(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,task\n1,"closed" then text\n')
    with pytest.raises(CsvError, match=r"line 2: .*'[,]' expected after '\"'"):
        list(read_tasks(str(path), header=True, column="task"))


def test_a_long_quoted_field_is_read_in_one_pass(tmp_path, monkeypatch):
    """A quoted field spanning many lines is parsed once, not once per line it spans. The
    work is counted, not timed: the characters handed to the CSV parser, at two sizes."""
    import csv

    from taskqueue.emitter import tasks as tasks_module

    parsed = [0]
    real_reader = csv.reader

    def counting_reader(source, *args, **kwargs):
        def counted():
            for text in source:
                parsed[0] += len(text)
                yield text
        return real_reader(counted(), *args, **kwargs)

    monkeypatch.setattr(tasks_module.csv, "reader", counting_reader)
    work = {}
    for lines in (1_000, 2_000):
        path = tmp_path / f"t{lines}.csv"
        body = "\n".join(f"line {n} of a long cell" for n in range(lines))
        path.write_text(f'id,task\n1,"{body}"\n2,after\n')
        parsed[0] = 0
        assert texts(path, header=True, column="task", max_bytes=1_000_000) == \
            [(2, body), (lines + 2, "after")]
        assert len(body) <= parsed[0] <= path.stat().st_size, "each character parsed once"
        work[lines] = parsed[0]
    assert work[2_000] < 2.1 * work[1_000], ("linear, not quadratic", work)


def test_two_emitters_sharing_the_logs_keep_each_others_resume_point(tmp_path):
    """Two emitters save their points in one logs folder while a third process keeps reading
    the first one's: each ends with its own last value, and no read ever sees a half-written
    point (a torn file would read as 0, making --resume start over) or a point going back."""
    import multiprocessing

    from taskqueue.emitter.resume import ResumeState

    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        reads = pool.apply_async(_read_many, (str(tmp_path), "a.csv"))
        saves = pool.starmap(_save_many, [(str(tmp_path), "a.csv"), (str(tmp_path), "b.csv")])
        bad_reads, reads_done = reads.get(timeout=60)
    assert saves == [0, 0]
    assert reads_done > 0 and bad_reads == 0
    assert ResumeState(tmp_path, "a.csv", "q").confirmed_through() == 300
    assert ResumeState(tmp_path, "b.csv", "q").confirmed_through() == 300
    assert ResumeState(tmp_path, "c.csv", "q").confirmed_through() == 0, "a third file: none"


def _save_many(directory: str, source: str) -> int:
    from pathlib import Path

    from taskqueue.emitter.resume import ResumeState

    state = ResumeState(Path(directory), source, "q")
    mismatches = 0
    for number in range(1, 301):
        state.save(number, complete=False)
        mismatches += state.confirmed_through() != number
    return mismatches


def _read_many(directory: str, source: str) -> tuple[int, int]:
    """(reads that went back or came out torn, reads made) while the point is being saved."""
    from pathlib import Path

    from taskqueue.emitter.resume import ResumeState

    state = ResumeState(Path(directory), source, "q")
    import time

    deadline = time.monotonic() + 20
    last = bad = reads = 0
    while time.monotonic() < deadline and last < 300:
        value = state.confirmed_through()
        if value < last:
            bad += 1
        last = max(last, value)
        reads += last > 0
        # A reader that holds the file open without a pause would block every replace on
        # Windows (a real reader, indexer or antivirus lets go within milliseconds).
        time.sleep(0.002)
    return bad, reads
