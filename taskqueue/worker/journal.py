"""A worker's journal: the outcomes the broker could not take during an alarm, kept on disk.

During a memory or disk alarm RabbitMQ blocks every publishing connection, so no results
record and no copy to ``<queue>.retry`` / ``.dead`` can be confirmed. Rather than hold each
finished task (unacked) until the alarm ends, the worker writes its record and copy here, one
JSON line each, fsynced before the task is acked; once the broker takes publishes again the
outbox publishes every line (confirmed) and only then deletes the file.

Files live in ``<log dir>/journal/<queue>/``, named ``<host>.<pid>.<n>.jsonl``: *n* counts the
files of one process (an alarm's entries go to one file, closed when the alarm ends). A file
whose process is gone (kill -9, a crash, a power cut) is an orphan: a worker of the same host
on the same queue takes it over by renaming it to a name of its own (``os.replace``: atomic,
and a second worker renaming the same file finds it gone), then publishes it. Publishing twice
is harmless (records carry ids, readers count each once); losing a line is not, hence the
fsync. Pure file I/O: no broker, no pika (testable alone; POSIX and Windows).
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

SUFFIX = ".jsonl"
_file_numbers = itertools.count(1)  # per process: two journals of one process never collide


def safe_name(text: str) -> str:
    """*text* as one file name part on any OS (a queue or host name may hold '/' or ':')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def pid_alive(pid: int) -> bool:
    """Whether process *pid* still runs (a zombie does not: it was killed, nobody reaped it)."""
    if sys.platform == "win32":
        # os.kill(pid, 0) would terminate the process on Windows: ask the kernel instead.
        import ctypes

        kernel = ctypes.windll.kernel32
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel.GetLastError() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: it runs
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal said it exists
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


# --- JSON for what a copy carries (its headers may hold bytes, times, decimals) ---------------
def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {"$time": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, text), = value.items()
            if tag == "$bytes":
                return base64.b64decode(text)
            if tag == "$time":
                return datetime.datetime.fromisoformat(text)
            if tag == "$decimal":
                return Decimal(text)
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


class Journal:
    """One process's journal files for one queue (see the module docstring)."""

    def __init__(self, directory: Path, host: str | None = None, pid: int | None = None,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self.directory = directory
        self.host = safe_name(host or socket.gethostname())
        self.pid = os.getpid() if pid is None else pid
        self.alive = alive
        self.path: Path | None = None  # the file being appended to (an alarm's)
        self.entries = 0  # lines in it
        self._file: IO[bytes] | None = None

    def append(self, entries: Iterable[dict]) -> None:
        """Write *entries* to the open file, one line each, and fsync them: once this
        returns, they survive a kill -9 or a power cut. Raises OSError (disk full...)."""
        data = b"".join(json.dumps(to_json(entry), separators=(",", ":")).encode() + b"\n"
                        for entry in entries)
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self._new_path()
            self._file = open(self.path, "ab")  # noqa: SIM115 - open until sealed
            _sync_directory(self.directory)  # the new name survives a power cut too
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.entries += data.count(b"\n")

    def seal(self) -> Path | None:
        """Close the file being appended to (the alarm is over): it is ready to publish. The
        next ``append`` starts another file."""
        path, file = self.path, self._file
        self.path, self._file, self.entries = None, None, 0
        if file is not None:
            file.close()
        return path

    def take_orphans(self) -> list[Path]:
        """The files of processes of this host that no longer run, each renamed to a name of
        ours (atomically: a file another worker took first is gone, and skipped)."""
        taken = []
        for path, host, pid in self._files():
            if host != self.host or pid == self.pid or self.alive(pid):
                continue
            mine = self._new_path()
            try:
                os.replace(path, mine)
            except FileNotFoundError:
                continue  # another worker took it
            taken.append(mine)
        if taken:
            _sync_directory(self.directory)
        return taken

    @staticmethod
    def read(path: Path) -> tuple[list[dict], int]:
        """The entries of a file, and how many lines could not be read (a line torn by a kill
        during its write: its task was not acked, so the broker delivers it again)."""
        entries, unreadable = [], 0
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    entry = from_json(json.loads(line))
                except ValueError:
                    unreadable += 1
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
                else:
                    unreadable += 1
        return entries, unreadable

    def settle(self, path: Path, kept: list[dict]) -> None:
        """*path* was published: delete it, or keep only *kept* (what the broker would not
        take), rewritten safely: a new file, fsynced, then renamed over the old one."""
        if not kept:
            path.unlink(missing_ok=True)
            return
        fresh = path.with_name(path.name + ".new")
        with open(fresh, "wb") as handle:
            for entry in kept:
                handle.write(json.dumps(to_json(entry), separators=(",", ":")).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(fresh, path)
        _sync_directory(self.directory)

    def _new_path(self) -> Path:
        return self.directory / f"{self.host}.{self.pid}.{next(_file_numbers)}{SUFFIX}"

    def _files(self) -> list[tuple[Path, str, int]]:
        """(path, host, pid) of every journal file in the directory."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            parts = name[:-len(SUFFIX)].rsplit(".", 2) if name.endswith(SUFFIX) else []
            if len(parts) == 3 and parts[1].isdigit():
                found.append((self.directory / name, parts[0], int(parts[1])))
        return found


def _sync_directory(directory: Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a power cut (POSIX;
    Windows cannot open a directory, and NTFS journals its names itself)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Replay:
    """A journal file being published: how many of its entries the broker has yet to take,
    and those it would not (kept in the file for a later try). Once every entry is settled the
    file goes (``Journal.settle``; OSError if it cannot)."""

    journal: Journal
    path: Path
    left: int
    kept: list[dict] = field(default_factory=list)

    def settled(self, entry: dict, ok: bool) -> None:
        if not ok:
            self.kept.append(entry)
        self.left -= 1
        if self.left == 0:
            self.journal.settle(self.path, self.kept)
