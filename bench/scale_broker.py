#!/usr/bin/env python3
"""The broker side of bench/scale.py: its reading of the broker's counters (``Broker``:
read-only) and ``PrivateBroker``, a RabbitMQ node of the machine's version in a network
namespace of its own (``bench-scale``), with 20,000 file descriptors: the machine's broker is
shared (its counters move with other sessions' work) and allows 1,024 descriptors, fewer than
1,000 workers need.

Each connection the node accepts costs it a user-level receive buffer the size of the socket's
send buffer (RabbitMQ sets the driver's ``buffer`` to the larger of ``sndbuf`` and ``recbuf``).
On loopback the kernel grows an untuned ``sndbuf`` to ~3.9 MB at once: 3.76 MB of the node's
``binary`` memory per connection, measured (a bare TCP connect, no AMQP), 7.5 MB per worker.
``tcp_buffer`` sets ``tcp_listen_options.sndbuf`` and ``recbuf`` (RabbitMQ's own advice for
many connections, docs "Networking": "Tuning for a Large Number of Connections") so that
1,000 workers fit under the node's memory watermark (0.4 of the machine's 24 GiB: 10.1 GB).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS = "bench-scale"
NODE = "benchscale@localhost"
FD_LIMIT = 20000
BENCH_CONNECTION = "bench.scale"  # the benchmark's own connections' names begin so


class BenchError(RuntimeError):
    """The benchmark could not run a setting."""


EVAL = (
    'C = rabbit_global_counters:overview(), '
    'G = fun(T, K) -> maps:get(K, maps:get([{protocol,amqp091},{queue_type,T}], C)) end, '
    'io:format("pid ~s~n", [os:getpid()]), '
    'io:format("memory ~b~n", [erlang:memory(total)]), '
    '[io:format("fhc ~s ~b~n", [K, V]) || {K, V} <- file_handle_cache:info('
    '[total_limit, sockets_limit, total_used, sockets_used])], '
    '[io:format("count ~s ~s ~b~n", [T, K, G(T, K)]) || T <- [rabbit_stream_queue, '
    'rabbit_quorum_queue, rabbit_classic_queue], K <- [messages_delivered_total, '
    'messages_acknowledged_total, messages_redelivered_total]], '
    # a connection still opening has no figures yet: skipped (it has sent next to nothing)
    '[try io:format("conn ~b ~ts~n", [proplists:get_value(send_oct, I), case lists:keyfind('
    '<<"connection_name">>, 1, proplists:get_value(client_properties, I)) of '
    '{_, longstr, B} -> B; _ -> <<"-">> end]) catch _:_ -> skipped end || '
    'I <- rabbit_networking:connection_info_all([client_properties, send_oct])], ok.')


@dataclass
class Snapshot:
    at: float
    cpu: float  # the broker's user + system CPU seconds
    counts: dict[str, int]  # "<queue type> <counter>" -> value
    fhc: dict[str, int]
    memory: int
    fds: int
    send_oct: dict[str, int] = field(default_factory=dict)  # connection name -> bytes

    def stream(self) -> int:
        return self.counts["rabbit_stream_queue messages_delivered_total"]

    def acked(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("acknowledged_total")
                   and not k.startswith("rabbit_stream_queue"))

    def tasks_delivered(self) -> int:
        return sum(v for k, v in self.counts.items() if k.endswith("delivered_total")
                   and not k.startswith("rabbit_stream_queue"))

    def worker_bytes(self, prefix: str, consuming_only: bool = False) -> int:
        return sum(v for name, v in self.send_oct.items() if prefix in name
                   and not (consuming_only and name.endswith("(publishing)")))

    def foreign(self, prefix: str) -> int:
        """Connections that are not this setting's workers nor the benchmark's own."""
        return sum(1 for name in self.send_oct if prefix not in name
                   and not name.startswith(BENCH_CONNECTION)
                   and not name.startswith("emitter_of_tasks"))


class Broker:
    """Reads the broker's counters (never changes anything on it)."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        node = os.environ.get("BENCH_NODE")
        self.ctl = ["rabbitmqctl", *(["-n", node] if node else [])]
        self.where = f"private node {node} (bench/scale_broker.py)" if node else "the machine's"
        self.pid = int(self._ctl()["pid"])
        comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
        if comm != "beam.smp":
            raise BenchError(f"the node's pid {self.pid} is {comm!r}, not beam.smp: is the "
                             "broker on this machine?")
        self.version = subprocess.run([*self.ctl, "version"], capture_output=True,
                                      text=True, timeout=60).stdout.strip()
        limits = Path(f"/proc/{self.pid}/limits").read_text()
        self.fd_limit = int(re.search(r"Max open files\s+(\d+)", limits).group(1))

    def _ctl(self) -> dict:
        out = subprocess.run([*self.ctl, "eval", EVAL], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise BenchError(f"rabbitmqctl eval failed: {out.stderr.strip()[-300:]}")
        parsed: dict = {"counts": {}, "fhc": {}, "send_oct": {}}
        for line in out.stdout.splitlines():
            head, _, rest = line.partition(" ")
            if head in ("pid", "memory"):
                parsed[head] = rest
            elif head == "count":
                key, _, value = rest.rpartition(" ")
                parsed["counts"][key] = int(value)
            elif head == "fhc":
                key, _, value = rest.partition(" ")
                parsed["fhc"][key] = int(value)
            elif head == "conn":
                value, _, name = rest.partition(" ")
                parsed["send_oct"][name] = parsed["send_oct"].get(name, 0) + int(value)
        return parsed

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.ticks  # utime, stime

    def snapshot(self) -> Snapshot:
        parsed = self._ctl()
        return Snapshot(time.monotonic(), self.cpu(), parsed["counts"], parsed["fhc"],
                        int(parsed["memory"]), len(os.listdir(f"/proc/{self.pid}/fd")),
                        parsed["send_oct"])


class PrivateBroker:
    """See the module docstring. ``start()``, then ``run(argv)`` runs a command inside the
    namespace (with ``BENCH_NODE`` set), ``stop()`` removes the node, its epmd and the
    namespace. Root only (``ip netns``). *tcp_buffer*: bytes of ``sndbuf`` and ``recbuf``
    (None: RabbitMQ's defaults, the kernel's)."""

    def __init__(self, tcp_buffer: int | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-scale-broker-"))
        self.tcp_buffer = tcp_buffer

    def _ns(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", NETNS, *argv], **kwargs)

    def start(self) -> None:
        if NETNS in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                   text=True).stdout.split():
            self._clear()  # a run that was killed left it: ours
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        self._ns("ip", "link", "set", "lo", "up", check=True)
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")
        os.chmod(self.dir, 0o755)
        conf = "listeners.tcp.default = 127.0.0.1:5672\nloopback_users = none\n"
        if self.tcp_buffer:
            conf += "".join(f"tcp_listen_options.{key} = {self.tcp_buffer}\n"
                            for key in ("sndbuf", "recbuf"))
        for name, text in (("rabbitmq.conf", conf), ("enabled_plugins", "[].\n")):
            (self.dir / name).write_text(text)
            shutil.chown(self.dir / name, "rabbitmq", "rabbitmq")
        env = dict(os.environ, HOME="/var/lib/rabbitmq", RABBITMQ_NODENAME=NODE,
                   RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                   RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
                   RABBITMQ_LOG_BASE=str(self.dir / "log"),
                   RABBITMQ_PID_FILE=str(self.dir / "pid"))
        # setpriv, not the packaged wrapper's su: su's PAM limits would bring the node's
        # descriptors back to 1,024
        self._ns("sh", "-c", f"ulimit -n {FD_LIMIT}; exec setpriv --reuid rabbitmq --regid "
                 "rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
                 env=env, cwd="/var/lib/rabbitmq", check=True, timeout=60)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1)
            if self._ns("rabbitmqctl", "-n", NODE, "await_startup", "--timeout", "30",
                        capture_output=True, timeout=60).returncode == 0:
                return
        raise BenchError(f"the private broker did not start; see {self.dir}/log")

    def run(self, argv: list[str]) -> int:
        return self._ns("env", f"BENCH_NODE={NODE}", *argv).returncode

    def stop(self) -> None:
        self._ns("rabbitmqctl", "-n", NODE, "stop", capture_output=True, timeout=60)
        self._clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _clear(self) -> None:
        """What is left in our namespace (epmd, a node that did not stop) was started by
        this benchmark: ended by pid, then the namespace goes."""
        pids = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True,
                              text=True).stdout.split()
        for pid in map(int, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(1 if pids else 0)
        subprocess.run(["ip", "netns", "delete", NETNS], check=False)
