"""How long the results and control streams keep what they hold, changed with a RabbitMQ
policy: ``task_control.py retention``.

A stream's x-arguments (``x-max-age``, ``x-max-length-bytes``) are fixed when it is made and a
redeclaration with others is refused, so the retention of a stream that exists can only change
through a policy. On RabbitMQ 3.10 a policy's ``max-age`` / ``max-length-bytes`` apply to a
stream at once, whatever it was made with, and win over its x-arguments key by key (measured:
a stream made with x-max-length-bytes 4000 and given a policy of 100000 kept 100000; cleared,
4000 again); retention then removes the oldest whole segments.

Policies need the management plugin's HTTP API or ``rabbitmqctl`` on a broker node; AMQP has
no word for them. ``PolicyKeeper`` uses the API when it answers; otherwise the command line to
run on a node is given (``rabbitmqctl_line``). Only one policy applies to a queue (the highest
priority), so a policy of the user's that applies to the stream now is named, and not replaced
silently: without ``--replace`` nothing is set; with it ours takes over its keys.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from taskqueue.errors import EXIT_REFUSED, EXIT_UNREACHABLE, UserError
from taskqueue.wire.record import SEGMENT_BYTES

PRIORITY = 10  # above the 0 most policies have; a higher one of the user's is named
MANAGEMENT_PORT = 15672
HTTP_TIMEOUT = 5.0
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
RETENTION_KEYS = ("max-age", "max-length-bytes", "stream-max-segment-size-bytes")
# The keys RabbitMQ 3.10 lets a policy give a stream: one with any other key applies to none.
STREAM_KEYS = {*RETENTION_KEYS, "queue-leader-locator", "initial-cluster-size"}


def parse_bytes(text: str) -> int:
    """``20GB``, ``500MB``, ``1.5GB`` or a number of bytes (decimal units, as RabbitMQ's)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?[bB]?)\s*", text)
    value = float(match[1]) * UNITS[match[2].upper()] if match else 0
    if value < 1:
        raise ValueError(f"{text!r} is not a size: give e.g. 20GB, 500MB or a number of bytes")
    return int(value)


def show_bytes(count: float) -> str:
    for unit in ("TB", "GB", "MB", "KB"):
        if count >= UNITS[unit]:
            return f"{count / UNITS[unit]:.1f} {unit}"
    return f"{count:.0f} B"


@dataclass(frozen=True)
class StreamPolicy:
    """Our policy for one stream: its name, the pattern that matches that stream alone, and
    the retention it sets."""

    stream: str
    max_age: str | None
    max_bytes: int | None

    @property
    def name(self) -> str:
        return f"taskqueue-retention-{self.stream}"

    @property
    def pattern(self) -> str:
        return f"^{re.escape(self.stream)}$"

    def definition(self) -> dict[str, object]:
        found: dict[str, object] = {}
        if self.max_age is not None:
            found["max-age"] = self.max_age
        if self.max_bytes is not None:
            found["max-length-bytes"] = self.max_bytes
            # Retention removes whole segments: smaller ones keep the bound close.
            found["stream-max-segment-size-bytes"] = min(SEGMENT_BYTES, self.max_bytes)
        return found

    def body(self, priority: int, extra: dict[str, object] | None = None) -> dict[str, object]:
        """What the management API's PUT /api/policies takes; *extra*: keys of a policy we
        take over, ours winning."""
        return {"pattern": self.pattern, "apply-to": "queues", "priority": priority,
                "definition": {**(extra or {}), **self.definition()}}

    def rabbitmqctl_line(self, vhost: str, priority: int = PRIORITY) -> str:
        return " ".join(["rabbitmqctl", "set_policy", *(["-p", shlex.quote(vhost)]
                                                          if vhost != "/" else []),
                         "--apply-to", "queues", "--priority", str(priority),
                         shlex.quote(self.name), shlex.quote(self.pattern),
                         shlex.quote(json.dumps(self.definition()))])


@dataclass(frozen=True)
class Management:
    """The management plugin's HTTP API, with the broker URL's user (never shown)."""

    base: str  # http://host:15672
    user: str
    password: str
    vhost: str

    @classmethod
    def for_broker(cls, broker_url: str, override: str | None = None) -> Management:
        parts = urlsplit(broker_url)
        base = override
        if base is None:
            host = parts.hostname or "localhost"
            host = f"[{host}]" if ":" in host else host
            scheme = "https" if parts.scheme == "amqps" else "http"
            base = f"{scheme}://{host}:{MANAGEMENT_PORT}"
        split = urlsplit(base)
        host = split.netloc.rpartition("@")[2]  # a user in it is used, never shown
        base = f"{split.scheme}://{host}"  # a panel URL (…/#/queues) works too
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        login = split if split.username else parts
        return cls(base, unquote(login.username or "guest"), unquote(login.password or "guest"),
                   vhost)

    def answers(self) -> bool:
        """True when the API is there (and lets our user in); False when nothing answers."""
        try:
            self._call("GET", "/api/overview")
        except OSError:
            return False
        return True

    def policies(self) -> list[dict]:
        found = self._call("GET", f"/api/policies/{self._vhost}")
        return [policy for policy in found if isinstance(policy, dict)] \
            if isinstance(found, list) else []

    def put_policy(self, name: str, body: dict[str, object]) -> None:
        self._call("PUT", f"/api/policies/{self._vhost}/{quote(name, safe='')}", body)

    def queue(self, name: str) -> dict | None:
        try:
            found = self._call("GET", f"/api/queues/{self._vhost}/{quote(name, safe='')}")
        except UserError:
            return None
        return found if isinstance(found, dict) else None

    @property
    def _vhost(self) -> str:
        return quote(self.vhost, safe="")

    def _call(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as answer:
                text = answer.read()
        except urllib.error.HTTPError as exc:
            words = exc.read()[:200].decode("utf-8", "replace")
            raise UserError(f"the management API at {self.base} answered {method} {path} with "
                            f"{exc.code} {exc.reason} ({words}); the broker URL's user needs "
                            "the 'policymaker' (or 'administrator') tag to set policies",
                            EXIT_REFUSED) from None
        return json.loads(text) if text else None


def applies(policy: dict, stream: str) -> bool:
    """Whether a policy (as the API lists it) matches *stream* (RabbitMQ's regular expressions
    are PCRE; Python's agree on the patterns people write)."""
    if policy.get("apply-to", "all") not in ("all", "queues", "streams"):
        return False
    try:
        return re.search(str(policy.get("pattern", "")), stream) is not None
    except re.error:
        return False


@dataclass
class Applied:
    """What ``PolicyKeeper.set`` did for one stream."""

    policy: StreamPolicy
    replaced: dict | None = None  # the user's policy ours took over


class PolicyKeeper:
    """Sets our retention policies through the management API."""

    def __init__(self, api: Management) -> None:
        self.api = api

    def set(self, wanted: StreamPolicy, replace: bool) -> Applied:
        top = self.holding(wanted)
        if top is not None and not replace:
            raise UserError(
                f"the policy {top.get('name')!r} (pattern {top.get('pattern')!r}, priority "
                f"{top.get('priority', 0)}, {json.dumps(top.get('definition'))}) applies to "
                f"{wanted.stream!r} now; only one policy applies to a queue, so ours would end "
                "its hold on that stream: give --replace to set ours with its keys copied in "
                "(they then stop following it), or add the retention keys to it yourself",
                EXIT_REFUSED)
        extra = {key: value for key, value in dict(top.get("definition") or {}).items()
                 if key not in RETENTION_KEYS} if top is not None else {}
        priority = max(PRIORITY, int(top.get("priority", 0)) + 1) if top is not None else PRIORITY
        self.api.put_policy(wanted.name, wanted.body(priority, extra))
        return Applied(wanted, top)

    def holding(self, wanted: StreamPolicy) -> dict | None:
        """The user's policy that applies to the stream now: the one the broker names (its
        statistics may lag a few seconds), else the highest whose pattern matches the name and
        whose keys a stream supports (RabbitMQ 3.10 applies no other to a stream)."""
        policies = {policy.get("name"): policy for policy in self.api.policies()
                    if policy.get("name") != wanted.name}
        stream = self.api.queue(wanted.stream) or {}
        named = policies.get(stream.get("policy"))
        others = [policy for policy in policies.values() if applies(policy, wanted.stream)
                  and set(dict(policy.get("definition") or {})) <= STREAM_KEYS]
        return max([*others, *([named] if named else [])],
                   key=lambda policy: int(policy.get("priority", 0)), default=None)


def retention_in_effect(queue: dict) -> str:
    """The retention a stream has, from the management API's view of it: its policy's keys
    where it has one (they win), its x-arguments for the others."""
    arguments = dict(queue.get("arguments") or {})
    policy = dict(queue.get("effective_policy_definition") or {})
    parts = []
    for key in ("max-age", "max-length-bytes"):
        if key in policy:
            value, source = policy[key], f"policy {queue.get('policy')!r}"
        elif f"x-{key}" in arguments:
            value, source = arguments[f"x-{key}"], "as made"
        else:
            continue
        shown = show_bytes(float(value)) if key == "max-length-bytes" else value
        parts.append(f"{key} {shown} ({source})")
    return "retention: " + (", ".join(parts) or "none (kept for ever)")


def unreachable(api: Management) -> UserError:
    """No management API: nothing was set; the lines to run instead go to stdout."""
    return UserError(f"the management API does not answer at {api.base}, so nothing was set: "
                     "run the rabbitmqctl line(s) above on a broker node (after checking with "
                     "'rabbitmqctl list_policies' that no policy of yours matches the stream: "
                     "only one applies to a queue), or give --management-url",
                     EXIT_UNREACHABLE)
