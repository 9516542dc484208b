"""A 3-node RabbitMQ cluster whose nodes can be cut apart (network partitions) or paused.

Each node's Erlang distribution runs on a loopback address of its own (127.0.0.11, .12, .13:
long node names ``tqpN-xxxx@127.0.0.1N``), listens there and connects *from* there
(``inet_dist_use_interface``, ``inet_default_connect_options``), so every packet between two
nodes carries both nodes' addresses, stream replication included; its AMQP listener is on that
address too, while clients and rabbitmqctl connect from 127.0.0.1 and are never cut. The
cluster has an epmd of its own on a port of its own (``ERL_EPMD_PORT`` for every node and every
rabbitmqctl call; the machine's epmd on 4369 is never used), ``net_ticktime = 10`` and the
``cluster_partition_handling`` mode asked for. A cut is iptables DROP rules in a chain of the
cluster's own (``TQPART-<random>``), jumped to from INPUT and OUTPUT for 127.0.0.0/8 only and
removed by ``cleanup()`` (registered at exit too). Processes are only ever ended by pid.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid

from tests.brokers import ThrowawayBroker, free_port

ADDRESSES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
NET_TICKTIME = 10
PATIENCE = 60  # s a node may take to come back by itself after a heal
RECOVERIES = 3
START_APP_SECONDS = 45
MODES = ("pause_minority", "ignore", "autoheal")


def ensure_iptables() -> str:
    """The iptables command, installed from Debian's packages if missing (as the interop
    tests install their tools)."""
    found = shutil.which("iptables")
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    installed = subprocess.run(["apt-get", "install", "-y", "-q", "iptables"], env=env,
                               capture_output=True, text=True, timeout=300, check=False)
    if installed.returncode != 0:  # an image without package lists: fetch them once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300,
                       check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "iptables"], env=env,
                       capture_output=True, timeout=300, check=True)
    found = shutil.which("iptables")
    if not found:
        raise RuntimeError("iptables could not be installed (apt-get install iptables)")
    return found


class PartitionNode(ThrowawayBroker):
    """One node of a ``PartitionCluster``: its own address, the cluster's epmd."""

    def __init__(self, name: str, address: str, epmd_port: int, mode: str) -> None:
        super().__init__([f"cluster_partition_handling = {mode}"], name=name, host=address,
                         node_host=address)
        self.address = address
        self.epmd_port = epmd_port
        octets = address.replace(".", ",")
        self._write("advanced.config", f"[{{kernel, [{{net_ticktime, {NET_TICKTIME}}}]}}].\n")
        self._write("rabbitmq-env.conf", "# empty: not the machine's (its node name, epmd)\n")
        self.erl_args = (f"-kernel inet_dist_use_interface {{{octets}}} "
                         f"-kernel inet_default_connect_options [{{ip,{{{octets}}}}}] "
                         f"-kernel inet_dist_connect_options [{{ip,{{{octets}}}}}]")

    def _own_env(self) -> dict[str, str]:
        return {"ERL_EPMD_PORT": str(self.epmd_port), "RABBITMQ_USE_LONGNAME": "true",
                "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf")}

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("ERL_FLAGS", None)
        env.update(self._own_env(),
                   RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
                   RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=self.erl_args)
        return env

    def ctl_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ERL_FLAGS", None)
        env.update(self._own_env())
        return env

    def pid(self) -> int:
        """The pid of this node's Erlang VM (beam.smp)."""
        return int((self.dir / "pid").read_text().strip())

    def status(self) -> dict:
        try:
            out = self.ctl("cluster_status", "--formatter", "json", timeout=30)
        except subprocess.TimeoutExpired:  # a node busy starting, or paused: no view now
            return {}
        if out.returncode != 0:
            return {}
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {}

    def running_nodes(self) -> list[str]:
        return sorted(self.status().get("running_nodes", []))

    def partitions(self) -> dict:
        return self.status().get("partitions", {})

    def cleanup(self) -> None:
        try:
            pid = self.pid()
        except (OSError, ValueError):
            pid = None
        self.stop()
        if pid is not None:  # a node that would not stop: ended by its own pid, never by name
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def _brief(views: list[dict]) -> list[dict]:
    """What each node says of the cluster, without the feature flags and listeners."""
    return [{key: view.get(key) for key in ("running_nodes", "partitions")} if view else {}
            for view in views]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PartitionCluster:
    """Three nodes joined into one cluster; ``cut``, ``heal``, ``pause``, ``resume``.

    Always ``cleanup()`` (a ``with`` block does): the iptables rules go first, then the nodes
    stop, then the epmd; at exit too, in case a test run is interrupted."""

    def __init__(self, mode: str = "pause_minority") -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.suffix = uuid.uuid4().hex[:6]  # two runs at once share no name, port or chain
        self.chain = f"TQPART-{self.suffix}"
        self.epmd_port = free_port()
        self.nodes = [PartitionNode(f"tqp{n}-{self.suffix}", address, self.epmd_port, mode)
                      for n, address in enumerate(ADDRESSES)]
        self._epmd: subprocess.Popen | None = None
        self._iptables: str | None = None
        self._jumps: list[list[str]] = []
        self._paused: set[int] = set()
        self._cleaned = False
        atexit.register(self.cleanup)

    def __enter__(self) -> PartitionCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.cleanup()

    # --- building ------------------------------------------------------------------------
    def start(self) -> PartitionCluster:
        try:
            self._iptables = ensure_iptables()
            self._start_epmd()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda node: node.start(timeout=90), self.nodes))
            for node in self.nodes[1:]:
                node.stop_app()
                joined = node.ctl("join_cluster", self.nodes[0].node)
                assert joined.returncode == 0, joined.stderr
                node.start_app()
            self._make_chain()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_epmd(self) -> None:
        # A child of ours, in the foreground, on loopback addresses only: ended by its pid.
        addresses = ",".join(("127.0.0.1", *ADDRESSES))
        self._epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address",
                                       addresses], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["epmd", "-port", str(self.epmd_port), "-names"],
                                   capture_output=True, text=True, check=False)
            if probe.returncode == 0:
                return
            if self._epmd.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"our epmd on port {self.epmd_port} did not start")

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        assert self._iptables
        return subprocess.run([self._iptables, "-w", *args], capture_output=True, text=True,
                              timeout=30, check=check)

    def _make_chain(self) -> None:
        self._ipt("-N", self.chain)
        for hook in ("INPUT", "OUTPUT"):
            jump = [hook, "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-j", self.chain]
            self._ipt("-I", *jump)
            self._jumps.append(jump)

    # --- faults --------------------------------------------------------------------------
    def cut(self, *side: PartitionNode) -> None:
        """Drop every packet between the nodes of *side* and the others (both ways)."""
        assert side and all(node in self.nodes for node in side)
        others = [node for node in self.nodes if node not in side]
        for one in side:
            for other in others:
                for src, dst in ((one.address, other.address), (other.address, one.address)):
                    self._ipt("-A", self.chain, "-s", src, "-d", dst, "-j", "DROP")

    def heal(self) -> None:
        """Let every packet through again."""
        self._ipt("-F", self.chain)

    def pause(self, node: PartitionNode) -> None:
        """SIGSTOP the node's Erlang VM (by its pid): it answers nothing, its sockets stay."""
        pid = node.pid()
        self._paused.add(pid)
        os.kill(pid, signal.SIGSTOP)

    def resume(self, node: PartitionNode) -> None:
        pid = node.pid()
        os.kill(pid, signal.SIGCONT)
        self._paused.discard(pid)

    def set_mode(self, mode: str) -> None:
        """Change cluster_partition_handling on every running node (read at each partition)."""
        assert mode in MODES, mode
        for node in self.nodes:
            done = node.ctl("eval", f"application:set_env(rabbit, cluster_partition_handling, "
                                    f"{mode}).")
            assert done.returncode == 0, done.stderr
        self.mode = mode

    def wait_whole(self, restart: PartitionNode | None = None, timeout: float = 300) -> None:
        """Until every node sees all three running and no partition. In ``ignore`` mode a
        partition never heals by itself: the app of *restart* (the minority) is restarted once
        a partition is seen, as the RabbitMQ docs say to. Any node still not whole
        ``PATIENCE`` s after the heal (or after its last restart: a node of ``pause_minority``
        slow to come back, a restart whose table sync stalled) is restarted too, up to
        ``RECOVERIES`` times in all: healing the cluster is the harness's job, not the test's
        subject, and a not-whole cluster would fail every test after this one. *timeout*
        counts the waiting, not the restarts."""
        began = time.monotonic()
        deadline = began + timeout
        last_action, recoveries = began, 0
        while time.monotonic() < deadline:
            views = [node.status() for node in self.nodes]
            behind = self._behind(views)
            if not behind:
                return
            node = self._to_restart(views, behind, restart, recoveries,
                                    time.monotonic() - last_action)
            if node is not None:
                print(f"{time.strftime('%H:%M:%S')} wait_whole: restarting {node.node}: "
                      f"{_brief(views)}", flush=True)
                restarting = time.monotonic()
                try:
                    self.recover(node, whole=not views[self.nodes.index(node)])
                except (RuntimeError, subprocess.SubprocessError) as exc:  # the next one may do
                    print(f"wait_whole: the restart failed: {exc}", flush=True)
                recoveries, last_action = recoveries + 1, time.monotonic()
                deadline += last_action - restarting
            time.sleep(1)
        raise AssertionError(f"the cluster is not whole after {time.monotonic() - began:.0f} s "
                             f"({recoveries} restarts): "
                             f"{_brief([node.status() for node in self.nodes])}")

    def _behind(self, views: list[dict]) -> list[PartitionNode]:
        """The nodes whose view (``cluster_status``) is not all three running, no partition."""
        want = sorted(node.node for node in self.nodes)
        return [node for node, view in zip(self.nodes, views)
                if sorted(view.get("running_nodes", [])) != want or view.get("partitions")]

    def _to_restart(self, views: list[dict], behind: list[PartitionNode],
                    restart: PartitionNode | None, recoveries: int,
                    waited: float) -> PartitionNode | None:
        """The node to restart now, or None (wait): first *restart* once a partition is seen,
        then, once ``PATIENCE`` has passed, whichever node of *behind* the others least see
        running (one that does not answer has no view of its own)."""
        if recoveries >= RECOVERIES:
            return None
        if restart is not None and recoveries == 0 and any(v.get("partitions") for v in views):
            return restart
        if waited <= PATIENCE:
            return None
        return min(behind, key=lambda n: sum(n.node in v.get("running_nodes", ()) for v in views))

    def recover(self, node: PartitionNode, whole: bool = False) -> None:
        """Restart the app of *node* (the side not trusted after an ``ignore`` partition), or
        with *whole* (it does not answer) the whole node. A start that does not end in
        ``START_APP_SECONDS`` is followed by a restart of the whole node, which starts in
        seconds: after a partition, RabbitMQ 3.10 on Erlang 25.1+ can hang in Erlang's
        ``global`` (its log says "Global hang workaround"; rabbitmq-server#6034), its start
        waiting for Mnesia tables for minutes."""
        if not whole:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.ctl("stop_app", timeout=START_APP_SECONDS)
            try:
                if node.ctl("start_app", timeout=START_APP_SECONDS).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
        print(f"recover: restarting the whole node {node.node}", flush=True)
        try:
            pid = node.pid()
        except (OSError, ValueError):
            pid = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.ctl("stop", timeout=30)  # a VM stuck in its start may not answer even this
        if pid is not None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # our own node, by its pid
        node.start(timeout=180)

    # --- cleanup -------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        if self._iptables:
            for jump in self._jumps:
                self._ipt("-D", *jump, check=False)
            self._ipt("-F", self.chain, check=False)
            self._ipt("-X", self.chain, check=False)
        for pid in list(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.cleanup(), self.nodes))
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()  # our child, by its pid
            try:
                self._epmd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._epmd.kill()
                self._epmd.wait(timeout=10)
        self._no_daemon_epmd()

    def _no_daemon_epmd(self) -> None:
        """An Erlang VM (a rabbitmqctl, say) that starts on our port while our epmd is gone
        starts a daemon epmd there, which would outlive us: asked to end, on our port only."""
        env = {"PATH": os.environ["PATH"]}
        names = ["epmd", "-port", str(self.epmd_port), "-names"]
        if subprocess.run(names, capture_output=True, env=env, check=False).returncode == 0:
            subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], capture_output=True,
                           env=env, check=False)
