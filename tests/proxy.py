"""A TCP proxy on 127.0.0.1 whose path can go silent: bytes stop flowing both ways, with no
FIN and no RST, as when a NAT table or a firewall forgets a connection. Then ``drop_old()``
closes what was open before, and new connections flow again. For tests and bench/soak.py.
``HoldingProxy`` holds one direction of chosen connections only (an ack, a confirm)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time


class SilentProxy:
    """Forward 127.0.0.1:<port> to *target_port*; ``go_silent()``, ``drop_old()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._silent = threading.Event()
        self._generation = 0  # connections made before drop_old() belong to older generations
        self._closed = False
        self.silent_since: float | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def go_silent(self) -> None:
        self.silent_since = time.time()
        self._silent.set()

    def drop_old(self) -> None:
        """Close every connection made so far and let new ones flow."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._generation += 1
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
        self._silent.clear()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_old()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                generation = self._generation
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, generation),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        try:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                # Silent: hold the bytes, and an end of stream too (no FIN, no RST gets out).
                while self._silent.is_set() and generation == self._generation:
                    time.sleep(0.05)
                if generation != self._generation or not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            shut_down(source, sink)


def shut_down(*socks: socket.socket) -> None:
    """End both ways of each socket (a pump that ends takes its pair with it)."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class HoldingProxy(SilentProxy):
    """A proxy that can hold one direction of the connections whose client named itself so
    (pika sends the AMQP ``connection_name`` in clear in its first frames): ``hold(named(
    "listening_worker w (publishing)"), "client")`` keeps the broker's confirms from that
    worker's publishing connection; ``hold(named("listening_worker w"), "broker")`` keeps its
    consuming connection's acks from the broker. What is held is never let through: when either
    side closes, it is dropped with the pair (a SIGKILLed worker's held ack must not reach the
    broker). Other connections flow. (It does not go silent: that is ``SilentProxy``'s.)"""

    NAME_BYTES = 4096  # the handshake, where the connection's name is, is well within this

    def __init__(self, target_port: int) -> None:
        self._holds: frozenset[tuple[bytes, str]] = frozenset()  # replaced, never changed:
        self._first_bytes: dict[socket.socket, bytes] = {}      # pumps read it meanwhile
        super().__init__(target_port)

    @staticmethod
    def named(name: str) -> bytes:
        """The marker of the connections named exactly *name* (as AMQP encodes it: its length
        first, so ``"w"`` does not match ``"w (publishing)"``)."""
        encoded = name.encode()
        return struct.pack(">I", len(encoded)) + encoded

    def hold(self, marker: bytes, toward: str) -> None:
        """From now on, keep what goes *toward* ``"broker"`` or ``"client"`` on the
        connections whose first bytes hold *marker* (see ``named``)."""
        self._holds = self._holds | {(marker, toward)}

    def go_silent(self) -> None:
        raise NotImplementedError("HoldingProxy holds chosen connections; use SilentProxy")

    def drop_old(self) -> None:
        super().drop_old()
        self._first_bytes = {}

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        with self._lock:
            client = next((c for c, u in self._pairs if source in (c, u)), None)
        toward = "broker" if source is client else "client"
        held = bytearray()
        try:
            while generation == self._generation:
                readable, _, _ = select.select([source], [], [], 0.05)
                if readable:
                    data = source.recv(65536)
                    if not data:
                        return  # what is held goes nowhere
                    if toward == "broker":
                        seen = self._first_bytes.get(client, b"")
                        if len(seen) < self.NAME_BYTES:
                            self._first_bytes[client] = seen + data[:self.NAME_BYTES - len(seen)]
                    held += data
                if held and not self._holding(client, toward):
                    sink.sendall(held)
                    held.clear()
        except (OSError, ValueError):  # ValueError: select on a socket closed by drop_old
            pass
        finally:
            shut_down(source, sink)

    def _holding(self, client: socket.socket | None, toward: str) -> bool:
        name = self._first_bytes.get(client, b"")
        return any(marker in name for marker, side in self._holds if side == toward)
