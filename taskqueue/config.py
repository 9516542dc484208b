"""Options shared by both scripts: broker URLs, credentials, TLS, and the queue's shape.

Both scripts must declare the task queue with *identical* arguments, or RabbitMQ refuses the
second declaration; ``QueueSpec.arguments()`` is the single place that decides them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from taskqueue.errors import EXIT_BAD_INPUT, UserError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_QUEUE = "task_queue"
DEFAULT_MAX_TASK_BYTES = 64 * 1024  # a task is a line of text, not a payload store
DEFAULT_DELIVERY_LIMIT = 5  # quorum queues: redeliveries before the broker dead-letters


def broker_urls(cli_urls: list[str] | None, environ: dict[str, str] | None = None) -> list[str]:
    """The URLs to try, in order: every ``--url``, else ``$RABBITMQ_URL`` (comma-separated
    list allowed), else the local default. Each is validated."""
    environ = os.environ if environ is None else environ
    urls = list(cli_urls or [])
    if not urls and environ.get("RABBITMQ_URL"):
        urls = [u.strip() for u in environ["RABBITMQ_URL"].split(",") if u.strip()]
    urls = urls or [DEFAULT_URL]
    for url in urls:
        validate_url(url)
    return urls


def validate_url(url: str) -> None:
    """Raise UserError unless *url* is an amqp:// or amqps:// URL with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise UserError(f"cannot parse broker URL {mask_url(url)!r} ({exc}); "
                        "expected amqp://USER:PASSWORD@HOST:PORT/VHOST") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise UserError(f"broker URL {mask_url(url)!r} must start with amqp:// or amqps://")
    if not parts.hostname:
        raise UserError(f"broker URL {mask_url(url)!r} has no host; "
                        "expected amqp://USER:PASSWORD@HOST:PORT/VHOST")
    if port is not None and not 0 < port < 65536:
        raise UserError(f"broker URL {mask_url(url)!r} has port {port}, outside 1-65535")


def mask_url(url: str) -> str:
    """*url* with its password replaced by ``***``: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        # Unparseable: hide everything between '//' and '@' so no secret can leak.
        head, sep, tail = url.partition("@")
        return f"{head.split('//')[0]}//***@{tail}" if sep else url
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def with_credentials(url: str, credentials_file: str | None) -> str:
    """Put the ``user:password`` from *credentials_file* (first line) into *url*.

    Lets a password live in a file readable only by its owner instead of the command line,
    where every user of the machine can see it with ``ps``."""
    if not credentials_file:
        return url
    try:
        line = Path(credentials_file).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read credentials file {credentials_file!r} ({exc}); "
                        "it must hold one line USER:PASSWORD", EXIT_BAD_INPUT) from None
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise UserError(f"credentials file {credentials_file!r} must hold one line USER:PASSWORD")
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_user(url: str) -> str:
    """The user name in *url* (``guest`` when absent, as pika does)."""
    return unquote(urlsplit(url).username or "guest")


@dataclass(frozen=True)
class TlsOptions:
    """Certificate files for amqps:// URLs. Verification is always on."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: the URL list to fail over across, and for how long to try."""

    urls: list[str]
    connect_timeout: float = 60.0
    tls: TlsOptions = field(default_factory=TlsOptions)
    heartbeat: int | None = None  # None: accept the broker's proposal


@dataclass(frozen=True)
class QueueSpec:
    """The task queue and its companions, all durable.

    ``<name>.retry``  failed tasks wait here (per-message TTL) and flow back to ``<name>``;
    ``<name>.dead``   tasks that failed too often or can never succeed, with the reason;
    ``<name>.events`` one small JSON event per finished task, for the who-did-what report.
    The companions need no special arguments on ``<name>`` itself, so a queue made by an
    older version (or by the RabbitMQ tutorial) keeps working.
    """

    name: str = DEFAULT_QUEUE
    queue_type: str = "classic"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    @property
    def retry_name(self) -> str:
        return f"{self.name}.retry"

    @property
    def dead_name(self) -> str:
        return f"{self.name}.dead"

    @property
    def events_name(self) -> str:
        return f"{self.name}.events"

    def arguments(self) -> dict[str, object]:
        """Arguments of the task queue itself; classic queues get none (tutorial-compatible)."""
        if self.queue_type == "classic":
            return {}
        # Quorum queues count redeliveries; past the limit the broker moves the message to
        # the dead-letter queue itself, so a task that kills every worker cannot loop forever.
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_name,
        }

    def retry_arguments(self) -> dict[str, object]:
        """The retry queue dead-letters expired messages back onto the task queue."""
        return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.name}

    def declarations(self) -> list[tuple[str, dict[str, object]]]:
        """Every queue both scripts declare, in order, with its arguments."""
        return [
            (self.name, self.arguments()),
            (self.retry_name, self.retry_arguments()),
            (self.dead_name, {}),
            (self.events_name, {}),
        ]
