"""Who may use the dashboard: safe by default.

Without ``--auth-file`` a random token is made at start and the printed address carries it (as
Jupyter does); the first visit trades it for a signed cookie (HttpOnly, SameSite=Strict) and
the address bar loses it. ``Authorization: Bearer TOKEN`` works too (a Prometheus scrape). With
``--auth-file FILE`` (first line ``USER:PASSWORD``) the browser logs in on /login, and HTTP Basic
works for scripts. Every comparison is in constant time. Binding anything but a loopback
address without an auth file refuses to start: a token in an address is for one machine.

Behind a reverse proxy, ``--public-url https://ops.example.com/taskqueue/`` says where browsers
reach it (``Public``): the one Origin a POST may come from, the path prefix every route is
under, and ``Secure`` cookies scoped to that prefix under https. Forwarded headers
(``X-Forwarded-*``) are never read: the address is configured once, not believed per request.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from taskqueue.errors import EXIT_BAD_INPUT, UserError

DEFAULT_BIND = "127.0.0.1:8800"
DEFAULT_PORTS = {"http": 80, "https": 443}
PATH_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")


@dataclass(frozen=True)
class Access:
    """The token, or the one user and password, that opens the dashboard."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @classmethod
    def with_token(cls) -> Access:
        return cls(token=secrets.token_urlsafe(24))

    @classmethod
    def from_file(cls, path: Path) -> Access:
        try:
            first = path.read_text(encoding="utf-8").splitlines()[:1]
        except OSError as exc:
            raise UserError(f"cannot read --auth-file {str(path)!r} ({exc.strerror}); give a "
                            "file whose first line is USER:PASSWORD") from None
        user, sep, password = (first[0] if first else "").strip().partition(":")
        if not sep or not user or not password:
            raise UserError(f"--auth-file {str(path)!r}: its first line must be USER:PASSWORD "
                            "(both non-empty)")
        return cls(user=user, password=password)

    @property
    def login(self) -> bool:
        return self.user is not None

    def token_ok(self, given: str | None) -> bool:
        return self.token is not None and given is not None and hmac.compare_digest(
            given.encode(), self.token.encode())

    def password_ok(self, user: str | None, password: str | None) -> bool:
        if self.user is None or self.password is None or user is None or password is None:
            return False
        same_user = hmac.compare_digest(user.encode(), self.user.encode())
        same_password = hmac.compare_digest(password.encode(), self.password.encode())
        return same_user and same_password  # both compared, whatever the first said

    def header_ok(self, header: str | None) -> str | None:
        """Who an Authorization header says it is (None: nobody)."""
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return "token"
        if scheme.lower() == "basic" and self.login:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return user if self.password_ok(user, password) else None
        return None


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8800`` for IPv6) -> (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--bind {text!r}: give HOST:PORT, e.g. --bind {DEFAULT_BIND}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, access: Access) -> None:
    """Refuse to listen beyond this machine without a password."""
    if not is_loopback(host) and not access.login:
        raise UserError(f"refusing to serve on {host!r} without a password: the dashboard "
                        "controls the queue; give --auth-file FILE (first line USER:PASSWORD) "
                        "or bind a loopback address (--bind 127.0.0.1:8800)", EXIT_BAD_INPUT)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of *url* as a browser's Origin header says it: lower case,
    without the scheme's default port ("" for what is no URL)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return ""
    if not parts.scheme or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown_port = "" if port in (None, DEFAULT_PORTS.get(parts.scheme.lower())) else f":{port}"
    return f"{parts.scheme.lower()}://{host.lower()}{shown_port}"


@dataclass(frozen=True)
class Public:
    """Where browsers reach the dashboard. Without ``--public-url``: where it listens, under
    ``/`` (``origin`` None: a request's own ``http://Host`` is the one accepted, as before)."""

    origin: str | None = None  # "https://ops.example.com": the only Origin a POST may have
    prefix: str = "/"  # every route is under it; it starts and ends with "/"

    @classmethod
    def parse(cls, text: str | None) -> Public:
        if text is None:
            return cls()
        parts = urlsplit(text)
        wrong = ("give http:// or https://" if parts.scheme.lower() not in DEFAULT_PORTS
                 else "give a host (and a port below 65536)" if not origin_of(text)
                 else "no user or password in it" if "@" in parts.netloc
                 else "no ?query or #fragment" if parts.query or parts.fragment or "#" in text
                 else "its path: letters, digits, - . _ ~ and / only, no . or .. part"
                 if not _plain_path(parts.path) else "")
        if wrong:
            shown = text.replace(parts.netloc, parts.netloc.rpartition("@")[2])  # no password
            raise UserError(f"--public-url {shown!r}: {wrong}, e.g. --public-url "
                            "https://ops.example.com/taskqueue/ (where browsers reach the "
                            "dashboard through your proxy)")
        prefix = "/" + "/".join(part for part in parts.path.split("/") if part)
        return cls(origin=origin_of(text), prefix=prefix.rstrip("/") + "/")

    @property
    def secure(self) -> bool:
        """Cookies only over https (``Secure``): under an https public URL."""
        return bool(self.origin and self.origin.startswith("https://"))

    @property
    def url(self) -> str | None:
        return f"{self.origin}{self.prefix}" if self.origin else None

    def host_names(self) -> set[str]:
        """The Host headers a proxy may pass on for it (with its port or without: nginx's
        ``$host`` has none)."""
        if not self.origin:
            return set()
        parts = urlsplit(self.origin)
        name = parts.hostname or ""
        return {parts.netloc, f"[{name}]" if ":" in name else name}


def _plain_path(path: str) -> bool:
    parts = path.split("/")
    return set(path) <= PATH_CHARACTERS and not {".", ".."} & set(parts)
