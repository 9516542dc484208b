"""CSV rows -> tasks, and how long a task takes.

Without a header, every non-blank line *is* a task, exactly as the user wrote it: the line
``Resize a.png, b.png...`` becomes that text, commas and all. One exception, for files saved
from a spreadsheet: a line that is exactly one quoted CSV field (``"Resize a.png, b.png..."``,
with ``""`` for a quote inside), possibly followed by empty fields, is the text the user typed
in that cell. With ``--header --column``, the file is parsed as CSV and one column is taken;
``--key-column`` takes each task's rate-limit key from another (``task_key``, sent as the header
``x-key``). Files are streamed line by line, so memory does not grow with the number of rows,
and every error names the file and the line.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from taskqueue.broker.config import DEFAULT_MAX_TASK_BYTES
from taskqueue.errors import UserError
from taskqueue.wire.keys import MAX_KEY_BYTES as MAX_KEY_BYTES
from taskqueue.wire.keys import rate_key
from taskqueue.wire.messages import X_KEY, message_id

task_key = rate_key  # the key's rule lives in wire/keys.py: the worker and the arbiter cut alike


@dataclass(frozen=True)
class Task:
    """One unit of work: its text, where it came from, and a stable id for spotting duplicates."""

    text: str
    row: int  # line number in the source file (1-based), or position among --message tasks
    source: str  # file name, "<stdin>" or "<message>"
    message_id: str
    key: str = ""  # its rate-limit key (task_key), "" for none: no header at all

    @property
    def headers(self) -> dict[str, str] | None:
        """The message's headers table: only a key has one (the broker decodes a table for
        every message; publisher.py keeps the others without)."""
        return {X_KEY: self.key} if self.key else None

    @cached_property
    def body(self) -> bytes:
        """The message body: the text as UTF-8, encoded once however often it is sent."""
        return self.text.encode("utf-8")


class CsvError(UserError):
    """A problem in the task file; ``row`` is the bad line."""

    def __init__(self, message: str, row: int = 0) -> None:
        super().__init__(message)
        self.row = row


def seconds_for(text: str, seconds_per_dot: float) -> float:
    """The simulated work: a fixed time per '.' in the task text."""
    return text.count(".") * seconds_per_dot


def tasks_from_messages(messages: list[str], run_id: str = "",
                        keys: list[str | None] | None = None) -> Iterator[Task]:
    """Tasks given on the command line with --message (or to ``submit``), numbered from 1,
    with *keys* (one per task, ``task_key``'s rules) if given. Their ids include the run id:
    the same text sent by two runs is two tasks, not one published twice."""
    for number, text in enumerate(messages, start=1):
        if not text.strip():
            raise CsvError(f"--message number {number} is blank; give the task text", number)
        try:
            key = task_key(keys[number - 1]) if keys is not None else ""
        except ValueError as exc:
            raise CsvError(f"key number {number}: {exc}", number) from None
        yield Task(text, number, "<message>",
                   message_id(f"<message>\0{run_id}", number, text, "<message>"), key)


def open_task_file(path: str) -> tuple[BinaryIO, str]:
    """Open *path* (``-`` for stdin) for binary reading; return it and its display name."""
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path
    except FileNotFoundError:
        raise CsvError(f"task file {path!r} not found; pass --file PATH (or - for stdin)") from None
    except OSError as exc:
        # Windows says PermissionError for a directory: ask the file system what it is.
        if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
            raise CsvError(f"task file {path!r} is a directory; pass --file PATH to a CSV "
                           "file") from None
        raise CsvError(f"cannot read task file {path!r}: {exc.strerror}") from None


def read_lines(stream: BinaryIO, name: str, max_bytes: int) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without line ending) for every line; check size, NUL, UTF-8."""
    number = 0
    while True:
        raw = stream.readline(max_bytes + 3)  # bounded: one huge line cannot eat the memory
        if not raw:
            return
        number += 1
        line = raw.rstrip(b"\r\n")
        if len(line) > max_bytes:
            raise CsvError(f"{name} line {number}: longer than {max_bytes} bytes; split the task "
                           "or raise --max-task-bytes", number)
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]  # a BOM from spreadsheet exports is not part of the first task
        if b"\0" in line:
            raise CsvError(f"{name} line {number}: contains a NUL byte (binary file?); "
                           "save it as plain UTF-8 text", number)
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CsvError(f"{name} line {number}: not valid UTF-8 (byte 0x{line[exc.start]:02x} "
                           f"at column {exc.start + 1}); save the file as UTF-8", number) from None


def read_tasks(path: str, *, header: bool = False, column: str | None = None,
               key_column: str | None = None, max_bytes: int = DEFAULT_MAX_TASK_BYTES,
               skip_through: int = 0, run_id: str = "",
               also_rows: Collection[int] = ()) -> Iterator[Task]:
    """Stream the tasks of *path*. Rows numbered <= *skip_through* are read but not yielded,
    except those in *also_rows* (that is how --resume continues after the last confirmed row,
    or publishes refused rows again, then the rows after the last one read). A file's ids are
    stable across runs (resumable); stdin's include *run_id* (each run is new input). With
    *header*, *key_column* names the column of each task's rate-limit key (not in the id)."""
    stream, name = open_task_file(path)
    source = f"<stdin>\0{run_id}" if name == "<stdin>" else str(Path(path).resolve())
    label = "<stdin>" if name == "<stdin>" else Path(source).name
    try:
        lines = read_lines(stream, name, max_bytes)
        rows = (_column_rows(lines, name, column, max_bytes, key_column) if header
                else _plain_rows(lines))
        seen_any = False
        also = frozenset(also_rows)
        for number, text, key in rows:
            seen_any = True
            if number > skip_through or number in also:
                yield Task(text, number, name, message_id(source, number, text, label), key)
        if not seen_any:
            raise CsvError(f"{name} has no tasks (it is empty or blank); put one task per line")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


# One quoted field, "" for a quote inside, then nothing but empty fields: a spreadsheet's cell.
SPREADSHEET_CELL = re.compile(r'"((?:[^"]|"")*)",*')


def spreadsheet_cell(line: str) -> str:
    """The text typed in the cell if *line* is exactly one quoted CSV field (possibly followed
    by empty fields), as a spreadsheet saves a cell holding a comma; else *line* unchanged."""
    match = SPREADSHEET_CELL.fullmatch(line)
    return match.group(1).replace('""', '"') if match else line


def check_header(path: str, *, column: str | None, key_column: str | None,
                 max_bytes: int = DEFAULT_MAX_TASK_BYTES) -> None:
    """Read only the header row of *path* (a file, not stdin) and check that it has *column*
    and *key_column*: a wrong name (or an unreadable header) stops the emitter before it
    connects, nothing published. The rows are read_tasks' to check, as they stream."""
    stream, name = open_task_file(path)
    csv.field_size_limit(max(max_bytes + 1, 131072))
    try:
        for _number, header_row in _csv_records(read_lines(stream, name, max_bytes), name):
            _column_index(header_row, column, name)
            _column_index(header_row, key_column, name, "--key-column")
            return
    finally:
        stream.close()


def _plain_rows(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str, str]]:
    for number, text in lines:
        if text.strip():
            yield number, spreadsheet_cell(text), ""


def _column_rows(lines: Iterator[tuple[int, str]], name: str, column: str | None,
                 max_bytes: int = DEFAULT_MAX_TASK_BYTES, key_column: str | None = None
                 ) -> Iterator[tuple[int, str, str]]:
    """Parse CSV records (quoted fields may span lines) and take one column of each (and the
    key's, if *key_column*: a record too short to have it has no key)."""
    csv.field_size_limit(max(max_bytes + 1, 131072))  # our own limit speaks below, by name
    header_row: list[str] | None = None
    index = 0
    key_index: int | None = None
    for number, record in _csv_records(lines, name):
        if header_row is None:
            header_row = record
            index = _column_index(header_row, column, name)
            if key_column is not None:
                key_index = _column_index(header_row, key_column, name, "--key-column")
            continue
        if not any(field.strip() for field in record):
            continue
        if index >= len(record):
            raise CsvError(f"{name} line {number}: has {len(record)} fields, column "
                           f"{column or 1!s} needs {index + 1}", number)
        if len(record[index].encode("utf-8")) > max_bytes:
            raise CsvError(f"{name} line {number}: the task is longer than {max_bytes} bytes; "
                           "split it or raise --max-task-bytes", number)
        if record[index].strip():
            key = record[key_index] if key_index is not None and key_index < len(record) else ""
            yield number, record[index], task_key(key)


def _csv_records(lines: Iterator[tuple[int, str]], name: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record. The csv module pulls the lines itself,
    so a quoted field spanning many lines is parsed once (no re-scan per line)."""
    numbers: list[int] = []  # the line number of the last line handed to the reader

    def texts() -> Iterator[str]:
        for number, text in lines:
            numbers[:] = [number]
            yield text + "\n"

    reader = csv.reader(texts(), strict=True)
    start = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = numbers[0] if numbers else start
            where = f"line {start}" if line == start else f"lines {start}-{line}"
            problem = "a quoted field is never closed" if "EOF" in str(exc) else str(exc)
            raise CsvError(f"{name} {where}: {problem}; check the quotes (a quote inside a "
                           'quoted field is written "")', start) from None
        yield start, record
        start = (numbers[0] if numbers else start) + 1


def _column_index(header_row: list[str], column: str | None, name: str,
                  option: str = "--column") -> int:
    if column is None:
        return 0
    names = [h.strip() for h in header_row]
    if column in names:
        return names.index(column)
    if column.isdigit() and 1 <= int(column) <= len(names):
        return int(column) - 1
    raise CsvError(f"{name}: no column {column!r} in the header (columns: {', '.join(names)}); "
                   f"pass {option} NAME or a number from 1", 1)
