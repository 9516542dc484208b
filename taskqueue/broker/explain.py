"""What went wrong with a connection or a channel, in one line a person can act on: told by
the error's type and errno (not by its text, which differs by OS and locale), TLS failures by
OpenSSL's reason."""

from __future__ import annotations

import errno
import socket
import ssl
from urllib.parse import urlsplit

import pika.exceptions as pe
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

from taskqueue.broker.config import mask_url, url_user
from taskqueue.errors import EXIT_REFUSED, UserError

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h), as ssl.SSLCertVerificationError.verify_code.
UNTRUSTED_ISSUER_CODES = frozenset({2, 18, 19, 20, 21, 27})  # no CA we trust signed it
EXPIRY_CODES = frozenset({9, 10})                            # not yet valid, expired
NAME_MISMATCH_CODES = frozenset({62, 64})                    # host name, IP address
# The checks of ssl.VERIFY_X509_STRICT, on by default since Python 3.13: a CA without
# keyUsage, basicConstraints not critical, a missing key identifier... (OpenSSL 3.0+).
STRICT_RULE_CODES = range(79, 95)
# OS errors are told by type and errno, never by their text: Windows words them differently
# ("No connection could be made because the target machine actively refused it"). Windows'
# WSA codes are listed too, for an OSError that lost its subclass on the way.
REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, 10061})                    # WSAECONNREFUSED
TIMED_OUT_ERRNOS = frozenset({errno.ETIMEDOUT, 10060})                     # WSAETIMEDOUT
UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH,
                                10065, 10051})           # WSAEHOSTUNREACH, WSAENETUNREACH
WRAPPER_DEPTH = 8  # pika nests its errors three deep; the bound only guards against a cycle


def inner_error(exc: BaseException) -> BaseException | None:
    """The error that pika's wrapper *exc* carries, or None: an ``AMQPConnector*Error`` has it
    in ``exception``, ``AMQPConnectionWorkflowFailed`` one per address tried in
    ``exceptions`` (the last counts), and ``AMQPConnectionError`` in its first argument."""
    wrapped = getattr(exc, "exception", None)
    if isinstance(wrapped, BaseException):
        return wrapped
    several = getattr(exc, "exceptions", None)
    if several and isinstance(several[-1], BaseException):
        return several[-1]
    if isinstance(exc, pe.AMQPConnectionError) and exc.args \
            and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The socket, TLS or AMQP error under pika's wrappers (*exc* itself when unwrapped)."""
    for _ in range(WRAPPER_DEPTH):
        inner = inner_error(exc)
        if inner is None:
            break
        exc = inner
    return exc


def explain_certificate_error(error: BaseException, url: str) -> str:
    """One line for a broker certificate that failed verification: OpenSSL's own reason
    (``verify_message``: "CA cert does not include key usage extension", "Hostname
    mismatch...", "certificate has expired"...) and the fix that reason calls for."""
    code = getattr(error, "verify_code", None)
    reason = getattr(error, "verify_message", None) or str(error)
    head = f"the TLS certificate of {mask_url(url)} could not be verified ({reason})"
    if code in UNTRUSTED_ISSUER_CODES:
        return (f"{head}: no CA we trust signed it; pass the CA that signed the broker's "
                "certificate with --ca-file")
    if code in NAME_MISMATCH_CODES:
        host = urlsplit(url).hostname
        return (f"{head}: it is not made out to {host!r}; use a host name it lists in --url, "
                f"or give the broker a certificate for {host!r}")
    if code in EXPIRY_CODES:
        return f"{head}: renew the certificate, or set the clock right here or on the broker"
    if code in STRICT_RULE_CODES:
        return (f"{head}: the certificate or its CA breaks a rule of strict X.509 checking (on "
                "by default since Python 3.13); re-issue it to meet that rule")
    return f"{head}; check the broker's certificate and the CA given with --ca-file"


def explain_os_error(error: BaseException) -> str | None:
    """The reason for a socket error worth retrying, by type and errno (any OS), else None."""
    if isinstance(error, socket.gaierror):  # -2 "Name or service not known"; 11001 on Windows
        return "host name not found"
    if not isinstance(error, OSError):
        return None
    if isinstance(error, ConnectionRefusedError) or error.errno in REFUSED_ERRNOS:
        return "connection refused (is RabbitMQ running on that host and port?)"
    if isinstance(error, TimeoutError) or error.errno in TIMED_OUT_ERRNOS:
        return "timed out"
    if error.errno in UNREACHABLE_ERRNOS:
        return "no route to the host (is the network up, or a firewall in the way?)"
    return None


def explain_connect_error(exc: BaseException, url: str) -> tuple[bool, str]:
    """(fatal, reason) for a failed connection attempt. Fatal errors are the broker saying no,
    which waiting will not change; the others (refused, timeout, reset) are worth retrying."""
    where = mask_url(url)
    cause = root_cause(exc)
    text = repr(exc)
    if isinstance(cause, (pe.ProbableAuthenticationError, pe.AuthenticationError)):
        return True, (f"RabbitMQ at {where} refused the login of user {url_user(url)!r}; check the "
                      "user and password in --url / RABBITMQ_URL (guest works only on localhost)")
    if isinstance(cause, pe.ProbableAccessDeniedError):
        vhost = urlsplit(url).path.lstrip("/") or "%2F"
        return True, (f"RabbitMQ at {where} refused access to virtual host {vhost!r} (it does not "
                      "exist or the user has no permission); create it with 'rabbitmqctl add_vhost'"
                      " and 'rabbitmqctl set_permissions', or fix the URL")
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return True, explain_certificate_error(cause, url)
    # The TLS alerts below are OpenSSL's words, the same on every OS (Windows' CPython bundles
    # OpenSSL too).
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
        return True, (f"the broker at {where} wants a client certificate; pass --cert-file and "
                      "--key-file (a certificate signed by a CA the broker trusts)")
    if "BAD_CERTIFICATE" in text or "UNKNOWN_CA" in text or "bad certificate" in text:
        return True, (f"the broker at {where} refused our client certificate (--cert-file); "
                      "use one signed by a CA the broker trusts")
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return True, (f"{where} does not speak TLS (a plain AMQP port?); use amqp:// or the "
                      "broker's TLS port (usually 5671)")
    if isinstance(cause, pe.IncompatibleProtocolError):
        if urlsplit(url).scheme == "amqps":
            # Under load the broker's TLS alert can be lost to the reset that follows it.
            return False, ("the connection closed right after the TLS handshake (if the broker "
                           "wants a client certificate, pass --cert-file and --key-file)")
        return False, "the port answered but not as an AMQP broker (wrong port, or TLS port?)"
    os_reason = explain_os_error(cause)
    if os_reason:
        return False, os_reason
    if isinstance(cause, AMQPConnectorStackTimeout):  # pika's own deadline for the handshake
        return False, "timed out"
    return False, text[:200]


def explain_channel_error(exc: BaseException, queue: str) -> UserError | None:
    """A UserError for a channel the broker closed because of something the user must fix,
    else None (a transient loss worth reconnecting for)."""
    if isinstance(exc, UserError):
        return exc
    if not isinstance(exc, pe.ChannelClosedByBroker):
        return None
    if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
        return UserError(
            f"queue {queue!r} already exists with other arguments "
            f"({exc.reply_text.split(' - ')[-1]});"
            f" use another --queue, match its --queue-type, or delete it with "
            f"'rabbitmqctl delete_queue {queue}' if its messages can go", EXIT_REFUSED)
    if exc.reply_code == 403:
        return UserError(f"RabbitMQ refused an operation on queue {queue!r}: {exc.reply_text}; "
                         "grant the user configure/write/read permissions on the vhost",
                         EXIT_REFUSED)
    if exc.reply_code == 405:
        return UserError(f"queue {queue!r} is locked by another connection ({exc.reply_text})",
                         EXIT_REFUSED)
    return None
