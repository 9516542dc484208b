"""amqps:// against a broker node with a TLS listener and certificates made at test time."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.brokers import ThrowawayBroker, free_port
from tests.helpers import queue_state, run_script, start_worker, wait_for


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def make_server_cert(directory: Path, ca: str) -> None:
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
            "server.key", "-out", "server.csr", cwd=directory)
    openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
            cwd=directory)


def make_client_cert(directory: Path, ca: str) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=worker", "-keyout",
            "client.key", "-out", "client.csr", cwd=directory)
    openssl("x509", "-req", "-in", "client.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", "client.pem", cwd=directory)


def tls_broker(certs: Path, demand_client_cert: bool) -> ThrowawayBroker:
    """A node with a TLS listener using *certs* (copied where the rabbitmq user can read them);
    ``node.tls_port``; ``node.node_certs`` is removed by the caller."""
    node_certs = Path("/tmp") / f"tq-certs-{free_port()}"
    shutil.copytree(certs, node_certs)
    shutil.chown(node_certs, "rabbitmq", "rabbitmq")
    for path in node_certs.iterdir():
        shutil.chown(path, "rabbitmq", "rabbitmq")
    tls_port = free_port()
    verify = "verify_peer" if demand_client_cert else "verify_none"
    node = ThrowawayBroker([
        f"listeners.ssl.default = 127.0.0.1:{tls_port}",
        f"ssl_options.cacertfile = {node_certs}/test-ca.pem",
        f"ssl_options.certfile = {node_certs}/server.pem",
        f"ssl_options.keyfile = {node_certs}/server.key",
        f"ssl_options.verify = {verify}",
        f"ssl_options.fail_if_no_peer_cert = {str(demand_client_cert).lower()}",
    ]).start()
    node.tls_port, node.node_certs = tls_port, node_certs
    return node


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "test-ca")
    make_ca(certs, "other-ca")
    make_server_cert(certs, "test-ca")
    make_client_cert(certs, "test-ca")
    node = tls_broker(certs, demand_client_cert=False)
    node.certs = certs
    yield node
    node.cleanup()
    shutil.rmtree(node.node_certs, ignore_errors=True)


def test_emitter_and_worker_over_amqps(tls_node, logs, tmp_path):
    url = f"amqps://guest:guest@localhost:{tls_node.tls_port}/%2F"
    ca = str(tls_node.certs / "test-ca.pem")
    out = tmp_path / "w.out"
    worker = start_worker("--url", url, "--ca-file", ca, "--queue", "tls_q", "--seconds-per-dot",
                          "0", "--exit-when-idle", "1.5", log_dir=logs, out=out)
    wait_for(lambda: (queue_state("tls_q", tls_node.url) or (0, 0))[1] == 1, what="worker")
    sent = run_script("emitter_of_tasks.py", "--url", url, "--ca-file", ca, "--queue", "tls_q",
                      "--message", "secure.", log_dir=logs)
    assert sent.returncode == 0, sent.stderr
    assert worker.wait(timeout=30) == 0
    assert "done row 1" in out.read_text()
    assert "amqps://guest:***@localhost" in out.read_text()


def test_wrong_ca_is_refused_clearly(tls_node, logs):
    url = f"amqps://guest:guest@localhost:{tls_node.tls_port}/%2F"
    result = run_script("emitter_of_tasks.py", "--url", url, "--ca-file",
                        str(tls_node.certs / "other-ca.pem"), "--queue", "tls_q2",
                        "--message", "x", log_dir=logs)
    assert result.returncode == 4, result.stderr
    assert "could not be verified" in result.stderr and "--ca-file" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_amqps_to_a_plaintext_port_is_refused_clearly(tls_node, logs):
    url = f"amqps://guest:guest@localhost:{tls_node.port}/%2F"
    result = run_script("listening_worker.py", "--url", url, "--queue", "tls_q3", log_dir=logs)
    assert result.returncode == 4, result.stderr
    assert "does not speak TLS" in result.stderr


def test_missing_ca_file_is_bad_input(tls_node, logs, tmp_path):
    url = f"amqps://guest:guest@localhost:{tls_node.tls_port}/%2F"
    result = run_script("listening_worker.py", "--url", url, "--ca-file",
                        str(tmp_path / "nope.pem"), "--queue", "tls_q4", log_dir=logs)
    assert result.returncode == 2 and "cannot load TLS files" in result.stderr


@pytest.fixture(scope="module")
def client_cert_node(tls_node):
    """A second node whose TLS listener demands a client certificate signed by the test CA."""
    node = tls_broker(tls_node.certs, demand_client_cert=True)
    yield node
    node.cleanup()
    shutil.rmtree(node.node_certs, ignore_errors=True)


def test_a_broker_that_wants_a_client_certificate_says_so_at_once(client_cert_node, tls_node,
                                                                  logs):
    url = f"amqps://guest:guest@localhost:{client_cert_node.tls_port}/%2F"
    ca = str(tls_node.certs / "test-ca.pem")
    started = time.monotonic()
    result = run_script("emitter_of_tasks.py", "--url", url, "--ca-file", ca, "--queue",
                        "cert_q", "--message", "x", "--connect-timeout", "30", log_dir=logs)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "wants a client certificate" in result.stderr and "--cert-file" in result.stderr
    assert result.stderr.count("\n") == 1
    # At once: the broker's alert says it. (Under load the alert can be lost to the reset that
    # follows it, once: that attempt is retried, and its line already names the certificate.)
    assert time.monotonic() - started < 10, "not after --connect-timeout"
    retries = [line for line in result.stdout.splitlines() if "retrying" in line]
    assert len(retries) <= 1 and all("client certificate" in line for line in retries), retries
    with_cert = run_script("emitter_of_tasks.py", "--url", url, "--ca-file", ca, "--cert-file",
                           str(tls_node.certs / "client.pem"), "--key-file",
                           str(tls_node.certs / "client.key"), "--queue", "cert_q",
                           "--message", "x", log_dir=logs)
    assert with_cert.returncode == 0, with_cert.stdout + with_cert.stderr
