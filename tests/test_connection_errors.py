"""How a failed connection becomes one line: the OS errors of Linux and Windows (told by type
and errno, not by their text) and the reasons a broker's TLS certificate is not verified.
Pure tests build the errors the way pika hands them over; one runs an emitter against a port
where no broker listens (it runs on Windows too: the student's first error)."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorSocketConnectError,
    AMQPConnectorTransportSetupError,
)
from pika.exceptions import AMQPConnectionError

from taskqueue.broker.explain import explain_connect_error
from tests.brokers import free_port
from tests.helpers import run_script

URL = "amqp://guest:s3cret@127.0.0.1:5672/%2F"
TLS_URL = "amqps://guest:s3cret@rabbit.example:5671/%2F"


def as_select_connection_sees_it(error: BaseException) -> BaseException:
    """What ``SelectConnection``'s on_open_error callback gets (the worker's path)."""
    return AMQPConnectionError(
        AMQPConnectionWorkflowFailed([AMQPConnectorSocketConnectError(error)]))


def as_blocking_connection_raises_it(error: BaseException) -> BaseException:
    """What ``BlockingConnection`` raises (the report's and control's path)."""
    return AMQPConnectionError(AMQPConnectorSocketConnectError(error))


WRAPPINGS = [as_select_connection_sees_it, as_blocking_connection_raises_it]

REFUSED = "connection refused (is RabbitMQ running on that host and port?)"


@pytest.mark.parametrize("wrap", WRAPPINGS)
@pytest.mark.parametrize(("error", "reason"), [
    (ConnectionRefusedError(111, "Connection refused"), REFUSED),                      # Linux
    (ConnectionRefusedError(10061, "No connection could be made because the target machine "
                                   "actively refused it"), REFUSED),                   # Windows
    (OSError(10061, "WSAECONNREFUSED, its subclass lost"), REFUSED),
    (TimeoutError(10060, "A connection attempt failed because the connected party did not "
                         "properly respond after a period of time"), "timed out"),     # Windows
    (OSError(10060, "WSAETIMEDOUT, its subclass lost"), "timed out"),
    (socket.timeout("TCP connection attempt timed out"), "timed out"),                 # pika's
    (socket.gaierror(-2, "Name or service not known"), "host name not found"),         # Linux
    (socket.gaierror(11001, "getaddrinfo failed"), "host name not found"),             # Windows
    (OSError(errno.EHOSTUNREACH, "No route to host"), "no route to the host"),
    (OSError(10065, "A socket operation was attempted to an unreachable host"),
     "no route to the host"),
])
def test_os_errors_of_linux_and_windows_give_one_reason(wrap, error, reason):
    fatal, said = explain_connect_error(wrap(error), URL)
    assert not fatal, "worth retrying: a broker may come up"
    assert said.startswith(reason), said
    assert "s3cret" not in said


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    """An ``ssl.SSLCertVerificationError`` as the ssl module raises it for OpenSSL's *code*."""
    error = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} (_ssl.c:1006)")
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize(("code", "message", "fix"), [
    (20, "unable to get local issuer certificate", "pass the CA that signed the broker's"),
    (19, "self-signed certificate in certificate chain", "pass the CA that signed the broker's"),
    (18, "self-signed certificate", "--ca-file"),
    (62, "Hostname mismatch, certificate is not valid for 'rabbit.example'.",
     "not made out to 'rabbit.example'"),
    (64, "IP address mismatch, certificate is not valid for '10.0.0.7'.", "not made out to"),
    (10, "certificate has expired", "renew the certificate, or set the clock right"),
    (9, "certificate is not yet valid", "set the clock right"),
    (92, "CA cert does not include key usage extension", "strict X.509 checking"),
    (89, "Basic Constraints of CA cert not marked critical", "Python 3.13"),
    (85, "Missing Authority Key Identifier", "re-issue it"),
    (7, "certificate signature failure", "check the broker's certificate"),
])
def test_an_unverified_certificate_says_what_failed(code, message, fix):
    error = AMQPConnectionError(AMQPConnectionWorkflowFailed(
        [AMQPConnectorTransportSetupError(verify_error(code, message))]))
    fatal, said = explain_connect_error(error, TLS_URL)
    assert fatal, "a certificate does not change by waiting"
    assert said.startswith("the TLS certificate of amqps://guest:***@rabbit.example:5671/%2F "
                           f"could not be verified ({message})"), said
    assert fix in said, said
    assert "s3cret" not in said and "\n" not in said


def test_only_an_untrusted_issuer_asks_for_the_ca():
    """Before, every verify error said "pass the CA", also when the CA had been passed."""
    for code, message in ((92, "CA cert does not include key usage extension"),
                          (10, "certificate has expired"),
                          (62, "Hostname mismatch, certificate is not valid for 'x'.")):
        _, said = explain_connect_error(
            as_blocking_connection_raises_it(verify_error(code, message)), TLS_URL)
        assert "pass the CA" not in said, said


@pytest.mark.windows
def test_no_broker_listening_is_one_line(logs):
    """The newcomer's first error, on Linux and on Windows (WinError 10061 there)."""
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/%2F"
    result = run_script("emitter_of_tasks.py", "--url", url, "--queue", "test.no_broker",
                        "--message", "x", "--connect-timeout", "1.5", log_dir=logs)
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no RabbitMQ broker answered" in lines[0] and REFUSED in lines[0], lines[0]
    assert "Error(" not in result.stdout + result.stderr, "a raw exception repr"
    assert "Traceback" not in result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr
