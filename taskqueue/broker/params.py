"""pika's connection parameters for one of our URLs: credentials, heartbeat, timeouts, TLS."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import pika

from taskqueue.broker.config import BrokerSettings, TlsOptions
from taskqueue.errors import EXIT_BAD_INPUT, UserError


def connection_parameters(url: str, settings: BrokerSettings) -> pika.URLParameters:
    """pika parameters for *url*, with TLS verification on for amqps://."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1  # BrokerSession does the retrying, with backoff and failover
    params.socket_timeout = min(10.0, max(1.0, settings.connect_timeout))
    params.blocked_connection_timeout = None  # a resource alarm is waited out, never a reason
    if settings.client_name:                  # to drop the connection
        params.client_properties = {"connection_name": settings.client_name}
    if settings.heartbeat is not None:
        # The lower of the broker's proposal and ours (pika would take ours as it is).
        ours = settings.heartbeat
        params.heartbeat = lambda _connection, proposed: min(proposed, ours) if proposed else ours
    if urlsplit(url).scheme == "amqps":
        params.ssl_options = pika.SSLOptions(tls_context(settings.tls), urlsplit(url).hostname)
    return params


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """A verifying TLS context: the system CAs, or ``--ca-file``; a client certificate if given."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot load TLS files ({exc}); check --ca-file, --cert-file and "
                        "--key-file", EXIT_BAD_INPUT) from None
    return context
