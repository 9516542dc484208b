"""A task's rate-limit key (docs/design/rate-limit.md §5): the emitter's ``--key-column`` and
``submit(keys=)`` put the cell's text in the header ``x-key`` (at most 256 UTF-8 bytes; a
longer key is cut and ends with a digest, so distinct keys stay distinct; no key, no header).

The fast tests build the tasks and their properties; the broker tests read what the real
emitter and the Python API published on a queue of their own."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from taskqueue.api import submit
from taskqueue.commands.emitter import parse_args
from taskqueue.emitter.publisher import ConfirmedPublisher
from taskqueue.emitter.tasks import (
    MAX_KEY_BYTES,
    CsvError,
    Task,
    check_header,
    read_tasks,
    task_key,
    tasks_from_messages,
)
from taskqueue.errors import UserError
from taskqueue.wire.messages import X_KEY
from tests.helpers import MAIN_URL, drain, queue_state, run_python, run_script, write_csv

fast = pytest.mark.fast
LONG_A = "customer-" + "a" * 300 + "-one"
LONG_B = "customer-" + "a" * 300 + "-two"  # the same first 256 bytes as LONG_A


@fast
def test_a_short_key_is_kept_and_a_blank_one_is_none():
    assert task_key("api.example.com") == "api.example.com"
    assert task_key("  api.example.com \t") == "api.example.com"
    assert task_key("") == task_key("   ") == task_key(None) == ""
    assert task_key(42) == "42"
    exact = "k" * MAX_KEY_BYTES
    assert task_key(exact) == exact


@fast
def test_a_long_key_is_cut_to_256_bytes_and_distinct_long_keys_stay_distinct():
    a, b = task_key(LONG_A), task_key(LONG_B)
    assert len(a.encode()) <= MAX_KEY_BYTES and len(b.encode()) <= MAX_KEY_BYTES
    assert a != b
    assert a.startswith("customer-aaa") and a.endswith(
        "~" + hashlib.sha1(LONG_A.encode()).hexdigest()[:12])
    assert task_key(LONG_A) == a  # the same key always gives the same header


@fast
def test_a_long_key_of_many_byte_characters_is_cut_between_characters():
    key = task_key("é" * 200 + "€" * 100)  # 700 bytes of two- and three-byte characters
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES
    assert key.startswith("é" * 100)
    assert "\ufffd" not in key


@fast
def test_the_key_column_gives_each_task_its_key(tmp_path):
    path = write_csv(tmp_path / "jobs.csv", [
        "task,host", "resize a.png,api.example.com", "resize b.png,", "resize c.png",
        f"resize d.png,{LONG_A}", '"resize e.png, twice","  spaced  "'])
    tasks = list(read_tasks(str(path), header=True, column="task", key_column="host"))
    assert [(t.text, t.key) for t in tasks] == [
        ("resize a.png", "api.example.com"), ("resize b.png", ""), ("resize c.png", ""),
        ("resize d.png", task_key(LONG_A)), ("resize e.png, twice", "spaced")]
    assert tasks[0].headers == {X_KEY: "api.example.com"}
    assert tasks[1].headers is None and tasks[2].headers is None
    by_number = list(read_tasks(str(path), header=True, column="1", key_column="2"))
    assert [t.key for t in by_number] == [t.key for t in tasks]
    without = list(read_tasks(str(path), header=True, column="task"))
    assert [t.message_id for t in without] == [t.message_id for t in tasks], \
        "the key is not part of a task's id: the same row is the same task"
    assert all(t.key == "" for t in without)


@fast
def test_a_missing_key_column_names_the_option_and_the_columns(tmp_path):
    path = write_csv(tmp_path / "jobs.csv", ["task,host", "a,h"])
    with pytest.raises(CsvError, match=r"no column 'tenant'.*columns: task, host.*--key-column"):
        check_header(str(path), column="task", key_column="tenant")
    with pytest.raises(CsvError, match=r"no column 'job'.*--column"):
        check_header(str(path), column="job", key_column="host")
    check_header(str(path), column="task", key_column="host")  # both there: no error
    with pytest.raises(CsvError, match="--key-column"):
        list(read_tasks(str(path), header=True, key_column="tenant"))


@fast
def test_the_key_travels_as_the_x_key_header_and_no_key_means_no_headers_table():
    publisher = SimpleNamespace(_run_id="r1")
    keyed = Task("t", 1, "f.csv", "f.csv:1:0", "api.example.com")
    plain = Task("t", 2, "f.csv", "f.csv:2:0")
    assert ConfirmedPublisher._properties(publisher, keyed, False).headers == {  # type: ignore[arg-type]
        "x-key": "api.example.com"}
    assert ConfirmedPublisher._properties(publisher, plain, False).headers is None  # type: ignore[arg-type]


@fast
def test_key_column_needs_a_file_with_a_header():
    for argv in (["--key-column", "host"], ["--header", "--message", "x", "--key-column", "h"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2
    assert parse_args(["--header", "--key-column", "host"]).key_column == "host"


@fast
def test_submit_keys_one_per_task_checked_before_anything_is_sent():
    # (the fast tier refuses connections: an error raised here was raised before connecting)
    with pytest.raises(UserError, match="2 keys for 3 tasks"):
        submit(["a", "b", "c"], queue="test.keys.never", keys=["k1", "k2"])
    with pytest.raises(UserError, match="key number 2"):
        submit(["a", "b"], queue="test.keys.never", keys=["k1", "bad \ud800"])
    tasks = list(tasks_from_messages(["a", "b", "c"], "run", ["k1", "", None]))
    assert [t.key for t in tasks] == ["k1", "", ""]


# --- on the broker ---------------------------------------------------------------------------
def keys_published(queue: str) -> dict[str, str | None]:
    """Each task's text -> its x-key header (None: none). A quorum queue adds
    x-delivery-count to what it delivers: only ours is looked at."""
    return {body.decode(): (properties.headers or {}).get(X_KEY)
            for properties, body in drain(queue)}


def test_published_tasks_carry_their_key(queue, logs, tmp_path):
    path = write_csv(tmp_path / "jobs.csv", [
        "task,host", "one,api.example.com", "two,", f"three,{LONG_A}", "four,ΑΘΗΝΑ"])
    done = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--header",
                      "--column", "task", "--key-column", "host", "--no-admin", log_dir=logs)
    assert done.returncode == 0, done.stderr
    assert keys_published(queue) == {"one": "api.example.com", "two": None,
                                     "three": task_key(LONG_A), "four": "ΑΘΗΝΑ"}


def test_a_missing_key_column_is_one_line_exit_2_and_nothing_published(queue, logs, tmp_path):
    path = write_csv(tmp_path / "jobs.csv", ["task,host", "one,h1"])
    done = run_script("emitter_of_tasks.py", "--queue", queue, "--file", str(path), "--header",
                      "--key-column", "tenant", "--no-admin", log_dir=logs)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "no column 'tenant'" in done.stderr and "--key-column" in done.stderr
    assert queue_state(queue) is None, "the emitter stopped before it declared anything"


def test_submit_with_keys_publishes_each_tasks_key(queue, logs):
    code = (f"import taskqueue; taskqueue.submit(['a', 'b', 'c'], queue={queue!r}, "
            f"url={MAIN_URL!r}, keys=['k1', '', {LONG_B!r}])")
    done = run_python(code, log_dir=logs)
    assert done.returncode == 0, done.stderr
    assert keys_published(queue) == {"a": "k1", "b": None, "c": task_key(LONG_B)}
