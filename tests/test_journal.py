"""worker/journal.py without a broker: what an alarm keeps from the broker is on disk before the
task is acked, is read back as written (a copy's bytes, times and decimals too), is deleted or
rewritten once published, and a dead worker's file is taken over by exactly one other. And the
seam in settlement.py: journaled only while the outbox is blocked, then acked."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pika
import pytest

from taskqueue.worker import journal as journal_module
from taskqueue.worker.copies import Copy
from taskqueue.worker.journal import Journal, Replay, pid_alive, safe_name
from taskqueue.worker.settlement import Settlement, Step

pytestmark = pytest.mark.fast

RECORD = {"kind": "task", "id": "r1", "row": 3, "outcome": "done", "result": "é ok"}
COPY = {"copy": {"routing_key": "q.retry", "body": b"\x00task\xff", "properties": {
    "headers": {"x-retries": 1, "raw": b"\x01", "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
                "price": Decimal("1.50"), "list": [b"a", "b"]},
    "delivery_mode": 2, "message_id": "m1", "expiration": "3000"}}}


def journal_of(tmp_path: Path, host: str = "box", pid: int = 100, dead: tuple[int, ...] = ()
               ) -> Journal:
    return Journal(tmp_path / "journal" / "q", host=host, pid=pid,
                   alive=lambda other: other not in dead)


def test_an_entry_is_fsynced_before_append_returns(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    journal = journal_of(tmp_path)
    journal.append([{"record": RECORD}])
    assert journal.path is not None and journal.path.exists()
    assert synced, "the line is on disk when the task is acked"
    assert journal.entries == 1
    journal.append([{"record": RECORD}, COPY])
    assert journal.entries == 3
    assert journal.path.name.startswith("box.100.") and journal.path.suffix == ".jsonl"


def test_entries_read_back_as_written_and_a_torn_last_line_is_skipped(tmp_path):
    journal = journal_of(tmp_path)
    journal.append([{"record": RECORD}, COPY])
    path = journal.seal()
    assert path is not None and journal.path is None and journal.entries == 0
    with open(path, "ab") as handle:
        handle.write(b'{"record": {"id": "half')  # a kill -9 in the middle of a write
    entries, unreadable = Journal.read(path)
    assert entries == [{"record": RECORD}, COPY]
    assert unreadable == 1
    journal.append([{"record": {"id": "r2"}}])
    assert journal.path != path, "after a seal, a new file"


def test_a_published_file_is_deleted_or_rewritten_with_what_the_broker_refused(tmp_path):
    journal = journal_of(tmp_path)
    journal.append([{"record": RECORD}, COPY, {"record": {"id": "r2"}}])
    path = journal.seal()
    assert path is not None
    entries, _ = Journal.read(path)
    replay = Replay(journal, path, len(entries))
    replay.settled(entries[0], True)
    replay.settled(entries[1], False)  # a copy the broker would not take
    assert path.exists(), "not all settled yet"
    replay.settled(entries[2], True)
    assert Journal.read(path) == ([COPY], 0), "only the refused entry is kept"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file left"
    again = Replay(journal, path, 1)
    again.settled(COPY, True)
    assert not path.exists()


def test_a_dead_workers_file_is_taken_over_once_and_a_live_ones_never(tmp_path):
    dead = journal_of(tmp_path, pid=200)
    dead.append([{"record": RECORD}])
    live = journal_of(tmp_path, pid=300)
    live.append([{"record": {"id": "live"}}])
    elsewhere = journal_of(tmp_path, host="other", pid=200)
    elsewhere.append([{"record": {"id": "other host"}}])
    first = journal_of(tmp_path, pid=400, dead=(200,))
    second = journal_of(tmp_path, pid=500, dead=(200,))
    taken = first.take_orphans()
    assert [Journal.read(path)[0] for path in taken] == [[{"record": RECORD}]]
    assert taken[0].name.startswith("box.400."), "renamed to the taker's own name"
    assert second.take_orphans() == [], "taken already: nobody publishes it twice"
    assert live.path is not None and live.path.exists(), "a running worker's file is its own"
    assert elsewhere.path is not None and elsewhere.path.exists(), "another host's is left"
    restarted = journal_of(tmp_path, pid=600, dead=(200, 300, 400))
    assert [Journal.read(path)[0] for path in restarted.take_orphans()] == [
        [{"record": {"id": "live"}}], [{"record": RECORD}]], "once their processes are gone"


def test_a_take_over_lost_to_another_worker_is_skipped(tmp_path, monkeypatch):
    dead = journal_of(tmp_path, pid=200)
    dead.append([{"record": RECORD}])
    taker = journal_of(tmp_path, pid=400, dead=(200,))

    def taken_first(source, _target):
        raise FileNotFoundError(source)  # another worker renamed it a moment earlier

    monkeypatch.setattr(journal_module.os, "replace", taken_first)
    assert taker.take_orphans() == []


def test_names_and_liveness():
    assert safe_name("a/b:c.d") == "a_b_c_d"
    assert pid_alive(os.getpid())
    assert safe_name("") == "_"


# --- the seam: a settlement keeps its outcome in the journal only while the outbox is blocked --
class Channel:
    def __init__(self) -> None:
        self.is_open = True
        self.acked: list[int] = []

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)


class BlockableOutbox:
    """Notes what it is given; ``block()`` calls the settlements waiting, as the outbox does."""

    def __init__(self, blocked: bool = False, keeps: bool = True) -> None:
        self.blocked, self.keeps = blocked, keeps
        self.records: list[tuple[dict, Callable[[bool], None]]] = []
        self.copies: list[Copy] = []
        self.kept: list[tuple[dict | None, Copy | None]] = []
        self.waiting: set[Callable[[], bool]] = set()

    def record_result(self, record: dict, on_confirmed: Callable[[bool], None]) -> None:
        self.records.append((record, on_confirmed))

    def publish_copy(self, copy: Copy) -> None:
        self.copies.append(copy)

    def keep(self, record: dict | None, copy: Copy | None) -> bool:
        if self.keeps:
            self.kept.append((record, copy))
        return self.keeps

    def when_blocked(self, journal_it: Callable[[], bool]) -> None:
        self.waiting.add(journal_it)

    def forget(self, journal_it: Callable[[], bool]) -> None:
        self.waiting.discard(journal_it)

    def block(self) -> None:
        self.blocked = True
        for journal_it in list(self.waiting):
            journal_it()


def settle(outbox: BlockableOutbox) -> tuple[Settlement, Channel, list[dict]]:
    channel, recorded = Channel(), list[dict]()
    delivery = SimpleNamespace(channel=channel, tag=7, body=b"task", settled=False)
    settlement = Settlement(delivery, outbox, lambda _s: None, recorded.append)  # type: ignore
    settlement.finish("retry", 1.0, {"id": "r1"}, "q.retry", pika.BasicProperties())
    return settlement, channel, recorded


def test_blocked_when_it_finishes_the_outcome_is_journaled_and_the_task_acked():
    outbox = BlockableOutbox(blocked=True)
    settlement, channel, recorded = settle(outbox)
    (record, copy), = outbox.kept
    assert record == {"id": "r1"} and copy is not None and copy.routing_key == "q.retry"
    assert outbox.records == [] and outbox.copies == [], "nothing waits for the broker"
    assert settlement.step is Step.ACKED and channel.acked == [7]
    assert recorded == [{"id": "r1"}]
    assert not outbox.waiting


def test_a_block_while_confirming_journals_what_is_not_confirmed_yet():
    outbox = BlockableOutbox()
    settlement, channel, _ = settle(outbox)
    assert settlement.step is Step.CONFIRMING and outbox.waiting
    outbox.records[0][1](True)  # the record is confirmed; the copy is not
    outbox.block()
    assert outbox.kept == [(None, outbox.copies[0])], "only the copy goes to the journal"
    assert settlement.step is Step.ACKED and channel.acked == [7]
    outbox.copies[0].on_settled(True)  # confirmed late: acked once all the same
    assert channel.acked == [7]


def test_no_journal_no_block_no_change():
    refusing = BlockableOutbox(keeps=False)  # the copy in flight, or the disk full
    settlement, channel, _ = settle(refusing)
    refusing.block()
    assert settlement.step is Step.CONFIRMING and channel.acked == [], "waits, as before"
    refusing.records[0][1](True)
    refusing.copies[0].on_settled(True)
    assert settlement.step is Step.ACKED and channel.acked == [7]
    closed = BlockableOutbox()
    settlement, channel, _ = settle(closed)
    channel.is_open = False  # the consuming connection is gone: the broker has the task back
    closed.block()
    assert closed.kept == [] and settlement.step is Step.CONFIRMING
