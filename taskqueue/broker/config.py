"""Options shared by the scripts: broker URLs, credentials, TLS, and the queues' shape.

The task queue is *adopted* when it exists (whatever its type and arguments: the RabbitMQ
tutorial, an older version of this project or an admin may have made it) and created with
``x-queue-type`` only when it does not (see topology.py). The companions ``<queue>.retry``,
``.dead`` and ``.events`` are ours: ``QueueSpec.companion_arguments`` decides their arguments
from the task queue's type, so they survive whatever the task queue survives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from taskqueue.broker.urgent import urgent_name, urgent_retry_name
from taskqueue.errors import EXIT_BAD_INPUT, UserError
from taskqueue.wire.record import RESULTS_MAX_AGE, RESULTS_MAX_BYTES, stream_arguments

DEFAULT_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_QUEUE = "task_queue"
DEFAULT_MAX_TASK_BYTES = 64 * 1024  # a task is a line of text, not a payload store
DEFAULT_DELIVERY_LIMIT = 5  # deliveries without an ack before a worker dead-letters a task
QUEUE_TYPES = ("auto", "quorum", "classic")
# RabbitMQ proposes 60 s, so a path that goes silent is noticed after 65-130 s (pika checks
# every heartbeat + 5 s); 10 s (RabbitMQ advises 5-20 s) notices it within 15-30 s. Our I/O
# loops never wait on work, so a short heartbeat cannot cost a long task its connection.
DEFAULT_HEARTBEAT = 10
# The rate limit's queues (docs/design/rate-limit.md), made the first time a worker sees a
# rate-limit command: asks to the arbiter expire after RATELIMIT_TTL_MS, well before a requester
# asks again (3 s), so an arbiter that fell behind never answers asks already repeated; parked
# tasks wait in the tier of WAIT_TIERS (seconds, one TTL per queue: a queue expires only at its
# head) and come back to the task queue.
RATELIMIT_TTL_MS = 1500
WAIT_TIERS = (1, 4, 16, 64, 256, 1024, 4096, 16384)


def broker_urls(cli_urls: list[str] | None,
                environ: Mapping[str, str] | None = None) -> list[str]:
    """The URLs to try, in order: every ``--url``, else ``$RABBITMQ_URL`` (comma-separated
    list allowed), else the local default. Each is validated."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    urls = list(cli_urls or [])
    if not urls and env.get("RABBITMQ_URL"):
        urls = [u.strip() for u in env["RABBITMQ_URL"].split(",") if u.strip()]
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
    heartbeat: int | None = DEFAULT_HEARTBEAT
    client_name: str = ""  # shown in the admin panel's connection list


@dataclass(frozen=True)
class QueueSpec:
    """The task queue and its companions, all durable.

    ``<name>``        the tasks; adopted as it is when it exists, else created as
                      ``queue_type`` (``auto`` creates a quorum queue);
    ``<name>.retry``  failed tasks wait here (per-message TTL) and flow back to ``<name>``;
    ``<name>.dead``   tasks that failed too often or can never succeed, with the reason;
    ``<name>.urgent`` tasks published ``--priority high``, taken before ``<name>``'s;
    ``<name>.results`` the record of every attempt's outcome (a stream: read by anyone, any
                      number of times, kept by size and age), written before each ack;
    ``<name>.control`` the stream of control commands (task_control.py);
    ``<name>.ratelimit`` asks to the rate limit's arbiter (its single active consumer), and
    ``<name>.wait.<N>s`` parked tasks, back in the task queue after N s: made only once a
                      rate limit was given (worker/ratelimit.py), not at start;
    the ``<name>.events`` exchange carries what live views watch (snapshots, finished tasks);
    ``<name>.events`` the queue, made by versions before 0.4, is still read by the report.
    """

    name: str = DEFAULT_QUEUE
    queue_type: str = "auto"
    results_max_age: str = RESULTS_MAX_AGE  # the results stream's retention, when we make it
    results_max_bytes: int = RESULTS_MAX_BYTES

    @property
    def retry_name(self) -> str:
        return f"{self.name}.retry"

    @property
    def dead_name(self) -> str:
        return f"{self.name}.dead"

    @property
    def events_name(self) -> str:
        return f"{self.name}.events"

    @property
    def exchange(self) -> str:
        """The topic exchange workers send events to (same name as the events queue)."""
        return self.events_name

    @property
    def control_name(self) -> str:
        """The stream of control commands (pause, resume, cancel, stop): task_control.py."""
        return f"{self.name}.control"

    @property
    def results_name(self) -> str:
        """The stream of results records (wire/record.py): every attempt's outcome."""
        return f"{self.name}.results"

    @property
    def streams(self) -> list[str]:
        """The streams beside the queue: its record of results, its control commands."""
        return [self.results_name, self.control_name]

    @property
    def everything(self) -> list[str]:
        """Every queue and stream of ours that may exist for this queue (the legacy events
        queue included): what ``task_control.py delete-queue`` removes. ``<queue>.urgent.retry``
        is made by a worker that consumes ``<queue>.urgent`` (worker/lanes.py)."""
        return [*self.all_queues, urgent_retry_name(self.name), *self.rate_queues,
                self.events_name, *self.streams]

    @property
    def ratelimit_name(self) -> str:
        """The asks to the rate limit's arbiter (single active consumer)."""
        return f"{self.name}.ratelimit"

    def wait_name(self, tier: int) -> str:
        """The queue where a task parked for *tier* seconds waits (WAIT_TIERS)."""
        return f"{self.name}.wait.{tier}s"

    @property
    def wait_names(self) -> list[str]:
        return [self.wait_name(tier) for tier in WAIT_TIERS]

    @property
    def rate_queues(self) -> list[str]:
        """The queues a rate limit needs, made when a worker first sees one."""
        return [self.ratelimit_name, *self.wait_names]

    def results_arguments(self) -> dict[str, object]:
        return stream_arguments(self.results_max_age, self.results_max_bytes)

    @property
    def urgent_name(self) -> str:
        """The tasks published ``--priority high`` (broker/urgent.py)."""
        return urgent_name(self.name)

    @property
    def companions(self) -> list[str]:
        """The queues made beside the task queue (since 0.4 no ``.events`` queue: the record
        of results is the ``.results`` stream)."""
        return [self.retry_name, self.dead_name, self.urgent_name]

    @property
    def all_queues(self) -> list[str]:
        return [self.name, *self.companions]

    def create_type(self) -> str:
        """The type to create the task queue with when it does not exist."""
        return "quorum" if self.queue_type == "auto" else self.queue_type

    def task_queue_arguments(self) -> dict[str, object]:
        """Exactly what today's RabbitMQ tutorial declares, so its code can declare it too
        (RabbitMQ refuses a redeclaration with other arguments). Classic: none at all."""
        return {"x-queue-type": "quorum"} if self.create_type() == "quorum" else {}

    def companion_arguments(self, name: str, task_type: str,
                            broker_version: tuple[int, ...]) -> dict[str, object]:
        """Arguments for a companion queue that does not exist yet. With a quorum task queue
        they are quorum queues too (replicated: a node's loss cannot take them away); the
        retry queue and the wait tiers then need RabbitMQ 3.10+ (message TTL, at-least-once
        dead-lettering), and fall back to classic before that. ``.ratelimit`` is quorum on any
        3.10+ broker."""
        quorum = task_type == "quorum"
        arguments: dict[str, object]
        if name == self.ratelimit_name:
            # Quorum whenever the broker can (even beside a classic task queue): a classic
            # single-active-consumer queue was reported not to fail over (amqp091-go#106).
            arguments = {"x-single-active-consumer": True, "x-message-ttl": RATELIMIT_TTL_MS}
            if broker_version >= (3, 10):
                arguments["x-queue-type"] = "quorum"
            return arguments
        tier = dict(zip(self.wait_names, WAIT_TIERS)).get(name)
        if name == self.retry_name or tier is not None:
            arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.name}
            if tier is not None:
                arguments["x-message-ttl"] = tier * 1000
            if quorum and broker_version >= (3, 10):
                arguments.update({"x-queue-type": "quorum",
                                  "x-dead-letter-strategy": "at-least-once",
                                  "x-overflow": "reject-publish"})
            return arguments
        return {"x-queue-type": "quorum"} if quorum else {}
