"""Logging for every script: one line per event to the console and to logs/<script>.log.

    from taskqueue.log import get_logger          # util_logger.py, in a checkout, is this
    log = get_logger("listening_worker", "INFO")

The console gets the messages on stdout so that stderr stays free for the one-line error a
script prints when it must stop. The log file's lines also name the script and its pid, since
several workers may share one file. Lines are written at once (the worker's console lines:
gathered, see BATCHED_CONSOLE_SCRIPTS) but flushed in batches (every 0.1 s, at once for
warnings and errors, and at exit): a worker logging two lines per task at thousands of tasks a
second spends its time on tasks, not on write calls.

The log directory is ``logs/`` in the directory the command runs in (never inside an installed
package), or ``$TASKQUEUE_LOG_DIR`` when set (tests, services and several checkouts use that).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FLUSH_SECONDS = 0.1
# Scripts that log lines per task and print nothing else on stdout: their console lines are
# gathered and written with the flushes too, even when the console is unbuffered
# (PYTHONUNBUFFERED=1, python -u, as many containers run): a write call per line there costs a
# worker ~20 us a line, ~6% of a zero-work task. Other scripts print to stdout themselves (a
# report, a table), so their lines go out at once, in order with what they print.
BATCHED_CONSOLE_SCRIPTS = ("listening_worker",)

# The logging docs' own optimisations: no stack walk for file/line, no thread names.
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False


def log_dir() -> Path:
    """Where logs and small state files live."""
    return Path(os.environ.get("TASKQUEUE_LOG_DIR") or Path.cwd() / "logs")


class ConsoleAndFileHandler(logging.Handler):
    """Formats each record once and writes it to the console and (if open) the log file.

    Console: ``05:25:14 INFO    message``;
    file:    ``2026-11-28 05:25:14.123 INFO    [script pid=42] message``."""

    def __init__(self, console: TextIO, log_file: TextIO | None,
                 batch_console: bool = False) -> None:
        super().__init__()
        self.console, self.log_file = console, log_file
        self.pid = os.getpid()
        # Console lines not written yet (batch_console): written by flush().
        self._console_lines: list[str] | None = [] if batch_console else None
        self._second = -1
        self._clock = self._day = ""

    @property
    def _lock(self) -> threading.Lock:
        """logging.Handler's lock (held around emit too): typed optional, made by its
        __init__."""
        lock = self.lock
        assert lock is not None
        return lock

    def _stamp(self, created: float) -> tuple[str, str]:
        """(day, clock) of *created*, recomputed once a second: strftime is not free."""
        second = int(created)
        if second != self._second:
            moment = time.localtime(second)
            self._second = second
            self._day, self._clock = time.strftime("%Y-%m-%d", moment), time.strftime(
                "%H:%M:%S", moment)
        return self._day, self._clock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self.write(record.levelno, record.name, message, record.created)
        except Exception:
            self.handleError(record)

    def write(self, level: int, name: str, message: str, created: float) -> None:
        """Write one finished line to both streams (warnings and errors flushed at once)."""
        level_name = f"{logging.getLevelName(level):<7}"
        with self._lock:
            day, clock = self._stamp(created)
            if self._console_lines is None:
                self._to_console(f"{clock} {level_name} {message}\n")
            else:
                self._console_lines.append(f"{clock} {level_name} {message}\n")
            if self.log_file is not None:
                millis = int((created % 1) * 1000)
                self.log_file.write(f"{day} {clock}.{millis:03d} {level_name} "
                                    f"[{name} pid={self.pid}] {message}\n")
        if level >= logging.WARNING:
            self.flush()

    def _to_console(self, line: str) -> None:
        """Logging must never kill a worker: a character the console cannot show (a Windows
        code page) is written as an escape; the log file stays UTF-8 and complete."""
        try:
            self.console.write(line)
        except UnicodeEncodeError:
            encoding = getattr(self.console, "encoding", None) or "ascii"
            with contextlib.suppress(OSError, ValueError):
                self.console.write(line.encode(encoding, "backslashreplace").decode(encoding))
        except (OSError, ValueError):
            pass  # a closed console (pipe gone): the log file still gets the line

    def flush(self) -> None:
        with self._lock:
            if self._console_lines:
                self._to_console("".join(self._console_lines))
                self._console_lines.clear()
            for stream in (self.console, self.log_file):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.flush()

    def close(self) -> None:
        self.flush()
        if self.log_file is not None:
            self.log_file.close()
        super().close()


class ScriptLogger(logging.Logger):
    """A standard Logger whose plain records skip the stdlib's per-record machinery (record
    object, filters, handler hierarchy) and go straight to its one ConsoleAndFileHandler:
    about 4 us a line instead of 7 here, which a worker logging two lines per task notices.
    Records with exception info or extras take the ordinary path."""

    fast_handler: ConsoleAndFileHandler | None = None

    def _log(self, level, msg, args, exc_info=None, extra=None, stack_info=False,
             stacklevel=1) -> None:
        if self.fast_handler is None or exc_info or extra or stack_info:
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel)
            return
        try:
            message = msg % args if args else str(msg)
        except (TypeError, ValueError):
            message = f"{msg} {args!r}"
        self.fast_handler.write(level, self.name, message, time.time())


_handlers: list[ConsoleAndFileHandler] = []
_loggers: dict[str, ScriptLogger] = {}


def _flush_all() -> None:
    for handler in list(_handlers):
        handler.flush()


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        _flush_all()


def get_logger(script: str, level: str = "INFO", console: TextIO | None = None) -> logging.Logger:
    """Return the logger for *script*, writing to the console (stdout, or *console*) and to
    ``logs/<script>.log``."""
    logger = _loggers.get(script)
    if logger is not None:  # configured already (a test or a second call)
        logger.setLevel(level)
        return logger
    logger = _loggers[script] = ScriptLogger(script, level)
    logger.propagate = False

    problem = None
    log_file = None
    try:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        log_file = open(directory / f"{script}.log", "a", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:  # a read-only checkout must not stop the work
        problem = exc

    handler = ConsoleAndFileHandler(console or sys.stdout, log_file,
                                    batch_console=script in BATCHED_CONSOLE_SCRIPTS)
    if not _handlers:
        threading.Thread(target=_flush_forever, name="log-flush", daemon=True).start()
        atexit.register(_flush_all)
    _handlers.append(handler)
    logger.addHandler(handler)
    logger.fast_handler = handler
    if problem:
        logger.warning("cannot write the log file (%s); logging to the console only", problem)

    # pika logs reconnect noise at WARNING/ERROR; our own lines already say what happened.
    logging.getLogger("pika").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
    return logger


def safe_console() -> None:
    """A console that cannot show a character (a Windows code page, PYTHONIOENCODING=cp1252)
    gets an escape instead of killing the script with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")
