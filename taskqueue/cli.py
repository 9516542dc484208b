"""What both scripts share on the command line: broker options, logging, and the rule that a
user error is one line on stderr with an exit code, never a traceback."""

from __future__ import annotations

import argparse
import faulthandler
import re
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, Protocol, TypeVar

import pika

from taskqueue import __version__
from taskqueue.broker.config import (
    DEFAULT_HEARTBEAT,
    DEFAULT_QUEUE,
    QUEUE_TYPES,
    BrokerSettings,
    QueueSpec,
    TlsOptions,
    broker_urls,
    with_credentials,
)
from taskqueue.errors import EXIT_BAD_INPUT, EXIT_UNREACHABLE, UserError
from taskqueue.log import LEVELS, safe_console
from taskqueue.wire.record import RESULTS_MAX_AGE, RESULTS_MAX_BYTES

Number = TypeVar("Number", int, float)


def _number(text: str, kind: Callable[[str], Number], minimum: float, what: str) -> Number:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number >= 0 (seconds, mostly)."""
    return _number(text, float, 0, "a number")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (counts, sizes)."""
    return _number(text, int, 1, "a whole number")


def seconds_above_zero(text: str) -> float:
    """argparse type: a number of seconds > 0 (timeouts)."""
    value = _number(text, float, 0, "a number of seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line on stderr (not the whole usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help starts with the script's docstring, examples and all; and
    ``--version``."""
    parser = OneLineParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """--url, --queue and friends, identical in both scripts."""
    group = parser.add_argument_group("broker")
    group.add_argument("--url", action="append", metavar="URL",
                       help="AMQP URL, amqp:// or amqps://; repeat it for fail-over across nodes "
                            "(default: $RABBITMQ_URL, which may be a comma-separated list, else "
                            "amqp://guest:guest@localhost:5672/%%2F)")
    group.add_argument("--credentials-file", metavar="PATH",
                       help="file whose first line is USER:PASSWORD, used instead of the URL's "
                            "(keeps the password off the command line)")
    group.add_argument("--queue", default=DEFAULT_QUEUE,
                       help="durable task queue (default: %(default)s)")
    group.add_argument("--queue-type", choices=QUEUE_TYPES, default="auto",
                       help="auto (default): use the queue as it is if it exists, else create a "
                            "quorum queue, as today's RabbitMQ tutorial does; quorum or classic: "
                            "create that type, and refuse a queue of the other type")
    group.add_argument("--connect-timeout", type=positive_float, default=60.0, metavar="SECONDS",
                       help="keep trying to (re)connect this long before giving up "
                            "(default: %(default)s)")
    group.add_argument("--heartbeat", type=positive_int, default=DEFAULT_HEARTBEAT,
                       metavar="SECONDS",
                       help="AMQP heartbeat timeout: a network path that goes silent is noticed "
                            "within 1.5-3 times this (default: %(default)s)")
    group.add_argument("--ca-file", help="CA certificate(s) to verify an amqps:// broker")
    group.add_argument("--cert-file", help="client certificate for amqps:// (optional)")
    group.add_argument("--key-file", help="client certificate's private key (optional)")
    parser.add_argument("--log-level", default="INFO", choices=LEVELS,
                        help="console and log file detail (default: %(default)s)")


def retention_age(text: str) -> str:
    if not re.fullmatch(r"[1-9]\d*[YMDhms]", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: give a number and a unit, "
                                         "e.g. 30D or 12h (Y, M, D, h, m, s)")
    return text


def add_retention_options(group: argparse._ActionsContainer) -> None:
    """How long the results stream keeps records, for the worker or emitter that makes it."""
    group.add_argument("--results-max-age", type=retention_age, default=RESULTS_MAX_AGE,
                       metavar="AGE", help="when the results stream <queue>.results is made: "
                       "keep records this long (x-max-age: 30D, 12h, ...; default: %(default)s)")
    group.add_argument("--results-max-bytes", type=positive_int, default=RESULTS_MAX_BYTES,
                       metavar="BYTES", help="... and at most this many bytes, the oldest "
                       "going first (x-max-length-bytes; default: %(default)s)")


def broker_settings(args: argparse.Namespace) -> BrokerSettings:
    urls = [with_credentials(url, args.credentials_file) for url in broker_urls(args.url)]
    return BrokerSettings(urls=urls, connect_timeout=args.connect_timeout,
                          tls=TlsOptions(args.ca_file, args.cert_file, args.key_file),
                          heartbeat=args.heartbeat)


def queue_spec(args: argparse.Namespace) -> QueueSpec:
    return QueueSpec(args.queue, args.queue_type,
                     getattr(args, "results_max_age", RESULTS_MAX_AGE),
                     getattr(args, "results_max_bytes", RESULTS_MAX_BYTES))


class Signalled(Protocol):
    def note_signal(self) -> None: ...


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM,
                # Windows has no SIGTERM to send: Ctrl+Break is the console's other stop key.
                *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else []))


def on_stop_signals(session: Signalled) -> None:
    """On Ctrl+C (SIGINT), SIGTERM and Windows' Ctrl+Break (SIGBREAK), only count
    (``note_signal``): the session's I/O loop notices within a tenth of a second and decides
    what the n-th request means."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda _signum, _frame: session.note_signal())


def on_dump_signal() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack on stderr and goes on (as Celery's
    workers do): what a process that seems stuck is doing, without stopping it. POSIX only;
    Windows has no such signal."""
    if sys.platform != "win32":  # (the form mypy --platform win32 understands)
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def keyboard_attached() -> bool:
    """True when stdin is a console someone can type into. ``isatty()`` alone is not enough on
    Windows, where it is also True for the null device (``< NUL``, a service, a scheduled
    task): there the console must also answer GetConsoleMode, or a question would be asked of
    nobody."""
    stdin = sys.stdin
    try:
        if stdin is None or not stdin.isatty():
            return False
        if sys.platform != "win32":
            return True
        import ctypes
        import msvcrt
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.GetConsoleMode.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
        kernel32.GetConsoleMode.restype = wintypes.BOOL
        mode = wintypes.DWORD()
        handle = msvcrt.get_osfhandle(stdin.fileno())
        return bool(kernel32.GetConsoleMode(handle, ctypes.byref(mode)))
    except (OSError, ValueError, AttributeError):
        return False


def run_script(script: str, main: Callable[[], int]) -> None:
    """Run *main*; turn a UserError into one line on stderr and its exit code."""
    safe_console()
    try:
        code = main()
    except UserError as error:
        print(f"{script}: error: {error}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:  # before the signal handlers were installed
        print(f"{script}: interrupted", file=sys.stderr)
        code = 130
    except pika.exceptions.AMQPError as exc:  # a one-shot command's connection went away
        print(f"{script}: error: the connection to the broker was lost ({exc!r:.200}); run "
              "it again once the broker is back", file=sys.stderr)
        code = EXIT_UNREACHABLE
    sys.exit(code)
