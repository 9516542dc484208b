"""Throwaway RabbitMQ nodes for tests that restart, stop or reconfigure a broker.

Each node has its own name, ports, config and data dir under a temp dir owned by the rabbitmq
user; the main broker on 5672 is never touched. Always ``stop()`` (the fixtures do)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ctl(node: str, *args: str, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """rabbitmqctl against *node*; *env*: for a node with an epmd of its own (partitions.py).
    One that takes longer than *timeout* is ended with everything it started (run as root,
    rabbitmqctl runs its Erlang VM under ``su`` in a session of its own, which ending
    rabbitmqctl alone leaves running), then ``TimeoutExpired`` is raised."""
    command = ["rabbitmqctl", "-n", node, *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(_descendants(process.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # ours, by pid: started just now
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # a pipe held by one missed
                process.communicate(timeout=10)
            raise
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _descendants(pid: int) -> list[int]:
    """Every process below *pid*, parents before children (Linux's /proc)."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *_descendants(child)]
    return found


class ThrowawayBroker:
    """A RabbitMQ node on <host>:<port> (host: 127.0.0.1 unless given), configured by *conf*
    lines; *node_host* is the host part of its Erlang node name."""

    def __init__(self, conf: list[str] | None = None, plugins: str = "[].",
                 name: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 node_host: str = "localhost") -> None:
        self.host = host
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"{name or 'tq' + str(self.port)}@{node_host}"
        self.dir = Path(tempfile.mkdtemp(prefix="tq-broker-"))
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        os.chmod(self.dir, 0o755)
        lines = [f"listeners.tcp.default = {host}:{self.port}", "loopback_users = none",
                 *(conf or [])]
        self._write("rabbitmq.conf", "\n".join(lines) + "\n")
        self._write("enabled_plugins", plugins + "\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def _write(self, name: str, text: str) -> None:
        path = self.dir / name
        path.write_text(text)
        shutil.chown(path, "rabbitmq", "rabbitmq")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "pid"))
        return env

    def ctl_env(self) -> dict[str, str] | None:
        """The environment rabbitmqctl needs to reach this node (None: the usual one)."""
        return None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return ctl(self.node, *args, timeout=timeout, env=self.ctl_env())

    def start(self, timeout: float = 60) -> ThrowawayBroker:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env(), check=True,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # await_startup fails until the node registers
            if self.ctl("await_startup", "--timeout", "30").returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"broker node {self.node} did not start; see {self.dir}/log")

    def stop(self) -> None:
        self.ctl("stop")

    def stop_app(self) -> None:
        """The broker goes down (all connections closed) but the Erlang VM stays: fast."""
        assert self.ctl("stop_app").returncode == 0

    def start_app(self) -> None:
        assert self.ctl("start_app").returncode == 0

    def restart(self, down_for: float = 0.5) -> None:
        self.stop_app()
        time.sleep(down_for)
        self.start_app()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def close_connections_of(broker: ThrowawayBroker, pid: int) -> int:
    """Make the broker close every connection that process *pid* has open to it (as a network
    fault or an admin would); return how many."""
    listed = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{broker.port} )"],
                            capture_output=True, text=True, check=True, timeout=10).stdout
    ports = {line.split()[2].rsplit(":", 1)[1] for line in listed.splitlines()
             if f"pid={pid}," in line}
    closed = 0
    rows = ctl(broker.node, "list_connections", "-q", "--no-table-headers", "pid", "peer_port")
    for row in rows.stdout.splitlines():
        connection, _, peer_port = row.partition("\t")
        if peer_port.strip() in ports:
            ctl(broker.node, "close_connection", connection.strip(), "test: connection dropped")
            closed += 1
    return closed
