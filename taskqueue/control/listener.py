"""The worker's side of ``<queue>.control``: read every command from the stream's start, act on
what concerns this worker, answer the new ones.

On each connection, before the worker takes a task, ``WorkerControl.start`` declares the stream
and consumes it from its first command, acting only on commands it has not read before (each is
known by its id): an offset kept from before would skip every command of a stream deleted and
made again meanwhile, whose offsets start at 0 again. The stream is bounded (a few KB in
practice, 10 MB at most), so reading it again costs what a worker's start costs. The broker
says nothing when a reader reaches the end of a stream, so the worker counts itself caught up
once no command has come for ``QUIET_SECONDS``; only then does it subscribe to the task queue,
so a worker started while the queue is paused takes nothing. When the broker ends the reading
(basic.cancel: the stream was deleted, or its member went away) the worker says so and reads
it again (making it again if need be): a worker that silently stopped reading would never hear
a pause or a stop.

A worker that may not read or declare the stream (no permission, or a broker older than 3.9,
which has no streams) says so once and works without control: the queue does not stop. A stream
that is there but not yet readable (just made, or its node restarting: any answer but those of
``refused_for_good``, whatever the words: "home node ... is down" on 3.x, "... process is stopped
by supervisor" on 4.x, "does not have a replica on the local node" on 3.10) is waited for, since
the worker cannot know whether the queue is paused; after ``WAIT_SECONDS`` the worker says so and
works, and keeps trying to read it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import pika
from pika.channel import Channel
from pika.connection import Connection
from pika.spec import Basic

from taskqueue.broker.config import QueueSpec
from taskqueue.broker.on_demand import declare_control
from taskqueue.control.state import ControlState, decode

QUIET_SECONDS = 0.5
RETRY_SECONDS = 1.0
LATER_RETRY_SECONDS = 10.0  # once the worker works without having read it
WAIT_SECONDS = 30.0
PREFETCH = 200  # a stream reader must have a prefetch; commands are small


def refused_for_good(reason: BaseException) -> bool:
    """A refusal that waiting cannot change: 403 (no permission), or a 406 for an argument the
    broker does not know ("invalid arg 'x-queue-type'": RabbitMQ before 3.9, no streams). Any
    other refusal passes, most often a stream just made or just restarted that has no replica
    running on our node yet: "does not have a replica on the local node" (3.10), "... a running
    replica ..." (later). Taken for final once (3.10's words were not known), it left a worker
    without pause, cancel and stop-workers for good: seen with workers starting together on a
    new queue, and after a broker restart."""
    code = getattr(reason, "reply_code", None)
    return code == 403 or (code == 406 and "invalid arg" in str(getattr(reason, "reply_text",
                                                                          "")))


def command_key(record: dict, body: bytes) -> str | bytes:
    """What tells one command (*record*, decoded from *body*) from another: its id, or for one
    without (written by hand) a digest of its bytes."""
    if isinstance(record.get("id"), str) and record["id"]:
        return record["id"]
    return hashlib.blake2b(body, digest_size=16).digest()


class WorkerControl:
    """Feeds the control stream's commands to ``on_command(action, record)``; answers through
    ``answer(record, what)``. ``state`` says what is in force (paused, cancelled runs)."""

    def __init__(self, spec: QueueSpec, state: ControlState, log: logging.Logger,
                 on_command: Callable[[str, dict], None],
                 answer: Callable[[dict, str], None]) -> None:
        self.spec, self.state, self.log = spec, state, log
        self.on_command, self.answer = on_command, answer
        self.available = True  # False once the stream turned out unusable: said once
        self._read_keys: set[str | bytes] = set()  # of the commands read (command_key)
        self._generation = 0
        self._waiting_since: float | None = None
        self._working_meanwhile = False  # said, and taking tasks, while the stream is unreadable

    @property
    def paused(self) -> bool:
        return self.state.paused

    def start(self, connection: Connection, ioloop, on_caught_up: Callable[[], None]) -> None:
        """Read the stream on *connection*; *on_caught_up* once no command came for a moment
        (or at once, when the stream cannot be used)."""
        self._generation += 1
        called: list[bool] = []

        def once() -> None:
            if not called:
                called.append(True)
                on_caught_up()

        self._read(connection, ioloop, self._generation, once)

    def _read(self, connection: Connection, ioloop, generation: int,
              on_caught_up: Callable[[], None]) -> None:
        if not self.available:
            on_caught_up()
            return
        quiet = {"timer": None, "done": False}

        def caught_up() -> None:
            if not quiet["done"] and generation == self._generation:
                quiet["done"] = True
                on_caught_up()

        def heard() -> None:  # a command came: wait for the next quiet moment
            if quiet["done"]:
                return
            if quiet["timer"] is not None:
                ioloop.remove_timeout(quiet["timer"])
            quiet["timer"] = ioloop.call_later(QUIET_SECONDS, caught_up)

        def unusable(reason: BaseException) -> None:
            if generation != self._generation:
                return
            if quiet["timer"] is not None and not quiet["done"]:
                ioloop.remove_timeout(quiet["timer"])  # a reading refused is no quiet moment
                quiet["timer"] = None
            code = getattr(reason, "reply_code", None)
            if refused_for_good(reason):
                self.available = False
                self.log.warning("cannot read the control stream %r (%s): working without "
                                 "pause/cancel/stop-workers (a user with permission for it, "
                                 "and RabbitMQ 3.9+, get them)", self.spec.control_name,
                                 getattr(reason, "reply_text", reason))
                caught_up()
            elif code is not None and connection.is_open:
                self._retry(connection, ioloop, generation, on_caught_up, reason)

        def cancelled() -> None:  # by the broker: read it again, after a moment
            if generation != self._generation:
                return
            self.log.warning("the broker ended our reading of the control stream %r (deleted, "
                             "or its node went away): reading it again", self.spec.control_name)
            self._read_later(RETRY_SECONDS, connection, ioloop, generation, on_caught_up)

        def reading() -> None:  # the broker took our consume: the stream is readable
            if generation != self._generation:
                return
            if self._working_meanwhile:
                self.log.info("the control stream %r is readable again", self.spec.control_name)
            self._waiting_since, self._working_meanwhile = None, False
            heard()

        def subscribe() -> None:
            # Quiet counts from here, not from the consume-ok: on 4.3 a stream whose leader was
            # on a node just cut off answers the consume only once a new one is elected (10-20
            # s), and taking no task until then would leave a worker idle on the majority side
            # (tests/test_partitions.py). Its commands are read when it answers. A refusal ends
            # this quiet moment (unusable): that stream is waited for, up to WAIT_SECONDS.
            heard()
            connection.channel(on_open_callback=lambda channel: self._consume(
                channel, generation, heard, unusable, cancelled, reading))

        declare_control(connection, self.spec, subscribe, unusable)

    def _retry(self, connection: Connection, ioloop, generation: int,
               caught_up: Callable[[], None], reason: BaseException) -> None:
        """Not readable yet (its node is restarting): try again soon; past WAIT_SECONDS,
        work meanwhile (said once) and keep trying, less often (a node that has no replica of
        the stream, one added to the cluster after it was made, refuses it for as long as that
        lasts)."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
            self.log.warning("the control stream %r cannot be read yet (%s): waiting for it "
                             "before taking tasks", self.spec.control_name,
                             getattr(reason, "reply_text", reason))
        elif now - self._waiting_since > WAIT_SECONDS and not self._working_meanwhile:
            self._working_meanwhile = True
            self.log.warning("the control stream %r is still unreadable after %.0f s: taking "
                             "tasks meanwhile (a pause given now is seen once it is readable)",
                             self.spec.control_name, WAIT_SECONDS)
            caught_up()
        self._read_later(LATER_RETRY_SECONDS if self._working_meanwhile else RETRY_SECONDS,
                         connection, ioloop, generation, caught_up)

    def _read_later(self, delay: float, connection: Connection, ioloop, generation: int,
                    on_caught_up: Callable[[], None]) -> None:
        """Read the stream again in *delay* seconds, unless the connection went meanwhile."""
        def again() -> None:
            if generation == self._generation and connection.is_open:
                self._read(connection, ioloop, generation, on_caught_up)

        ioloop.call_later(delay, again)

    def stop(self) -> None:
        """The connection is gone: whatever it was reading belongs to the past."""
        self._generation += 1

    def _consume(self, channel: Channel, generation: int, heard: Callable[[], None],
                 unusable: Callable[[BaseException], None], cancelled: Callable[[], None],
                 reading: Callable[[], None]) -> None:
        channel.add_on_close_callback(lambda _channel, reason: unusable(reason)
                                      if isinstance(reason, pika.exceptions.ChannelClosedByBroker)
                                      else None)

        def on_cancel(_frame: object) -> None:
            if channel.is_open:
                channel.close()  # (closed by us: unusable() ignores it)
            cancelled()

        channel.add_on_cancel_callback(on_cancel)

        def on_message(ch: Channel, method: Basic.Deliver, properties: pika.BasicProperties,
                       body: bytes) -> None:
            ch.basic_ack(method.delivery_tag)
            if generation != self._generation:
                return
            heard()
            record = decode(body)
            if record is None:
                return
            key = command_key(record, body)
            if key in self._read_keys:
                return  # read before (a reconnect reads the stream from its start again)
            self._read_keys.add(key)
            try:
                self._apply(record)
            except Exception:  # a command must never take the worker down: say it, go on
                self.log.exception("could not act on the control command %r", record)

        # The wait for an unreadable stream ends at the broker's consume-ok, not at the
        # declare: a stream that exists may still refuse the consume (no replica running here
        # yet), and a declare's success must not start that wait over (said every second).
        channel.basic_qos(prefetch_count=PREFETCH, callback=lambda _frame: channel.basic_consume(
            self.spec.control_name, on_message, arguments={"x-stream-offset": "first"},
            callback=lambda _frame: reading()))

    def _apply(self, record: dict) -> None:
        action = self.state.apply(record)
        if action is not None:
            self.on_command(action, record)
        if self.state.concerns(record) and self.state.is_new(record):
            self.answer(record, action or "nothing to change")
