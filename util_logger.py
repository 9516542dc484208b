"""Logging for every script: one line per event to the console and to logs/<script>.log.

    from util_logger import get_logger
    log = get_logger("listening_worker", "INFO")

The console gets the messages on stdout so that stderr stays free for the one-line error a
script prints when it must stop. The log directory is ``logs/`` next to this file, or
``$TASKQUEUE_LOG_DIR`` when set (tests and several checkouts use that).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)-7s [%(name)s pid=%(process)d] %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_dir() -> Path:
    """Where logs and small state files live."""
    return Path(os.environ.get("TASKQUEUE_LOG_DIR") or Path(__file__).resolve().parent / "logs")


def get_logger(script: str, level: str = "INFO") -> logging.Logger:
    """Return the logger for *script*, writing to the console and ``logs/<script>.log``."""
    logger = logging.getLogger(script)
    if logger.handlers:  # configured already (a test or a second call)
        logger.setLevel(level)
        return logger
    logger.setLevel(level)
    logger.propagate = False

    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    logger.addHandler(console)

    try:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(directory / f"{script}.log", encoding="utf-8")
    except OSError as exc:  # a read-only checkout must not stop the work
        logger.warning("cannot write the log file (%s); logging to the console only", exc)
    else:
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(file_handler)

    # pika logs reconnect noise at WARNING/ERROR; our own lines already say what happened.
    logging.getLogger("pika").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
    return logger
