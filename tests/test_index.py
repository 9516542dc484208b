"""The worker's done index (results/index.py), pure logic: which tasks have a done record."""

from __future__ import annotations

from taskqueue.results.index import DoneIndex
from taskqueue.wire.record import mark


def done(run: str, row: int, worker: str = "carol") -> dict:
    return {"kind": "task", "outcome": "done", "run_id": run, "message_id": f"f.csv:{row}:ab",
            "worker": worker, "finished": 100.0 + row}


def test_a_run_read_before_it_was_handed_is_known_at_once():
    """Found in review: a worker reading since run R1 read carol's done records of R2 before
    it was handed any R2 task, and dropped them; a redelivered R2 task then ran again."""
    index = DoneIndex()
    index.watch("R1")
    index.add(done("R2", 2))
    assert index.watch("R2"), "nothing of R2 was dropped"
    assert index.lookup("R2", "f.csv:2:ab") == ("carol", 102.0)
    assert index.lookup("R2", "f.csv:3:ab") is None


def test_a_run_whose_records_were_dropped_must_be_read_again():
    index = DoneIndex(max_runs=2)
    for run in ("A", "B", "C"):  # A is pushed out of the runs read meanwhile
        index.add(done(run, 1))
    assert not index.watch("A") and index.lookup("A", "f.csv:1:ab") is None
    for run in ("X", "Y", "Z"):  # and a handed run pushed out of the handed ones
        index.watch(run)
    assert not index.watch("A")


def test_forty_runs_handed_in_turn_stay_known():
    """Retries of 40 runs handed in turn (a chaos run's end): none is forgotten, so none is
    read from the stream again (with 8 kept, every one was, again and again)."""
    index = DoneIndex()
    runs = [f"R{n}" for n in range(40)]
    for run in runs:
        index.watch(run)
        index.add(done(run, 1))
    assert all(index.watch(run) for run in runs * 2)
    assert all(index.lookup(run, "f.csv:1:ab") for run in runs)


def test_another_run_or_id_is_not_done():
    index = DoneIndex()
    index.watch("R")
    index.add(done("R", 5))
    assert index.lookup("R", "f.csv:5:ab") is not None
    assert index.lookup("R", "f.csv:5:cd") is None, "same row, another id: another task"
    assert index.lookup("S", "f.csv:5:ab") is None, "another run runs it again"
    index.add({**done("R", 6), "outcome": "failed"})
    assert index.lookup("R", "f.csv:6:ab") is None


def test_marks_carry_their_process():
    """Two processes with one --name: each must see only its own marks come back."""
    first, second = mark("alice", 3, "nonce-a"), mark("alice", 3, "nonce-b")
    assert first["worker"] == second["worker"] and first["nonce"] != second["nonce"]


def test_an_odd_row_number_costs_no_memory_and_a_run_read_from_its_middle_little():
    """A producer's odd id (row 10,000,020) once grew a worker's index to 145 MB."""
    from taskqueue.results.index import RunIndex

    index = RunIndex()
    index.add("f.csv:500000:ab")  # read from the middle of a run
    index.add("f.csv:500003:ab")
    index.add("f.csv:10000020:ab")
    assert len(index.rows) == 4, "from row 500,000 on, not from row 1"
    assert "f.csv:10000020:ab" in index and "f.csv:500003:ab" in index
    assert "f.csv:500001:ab" not in index and "f.csv:10000021:ab" not in index
    index.add("f.csv:499990:ab")  # an earlier row, near: the span grows back
    assert index.base == 499990 and "f.csv:499990:ab" in index and "f.csv:500000:ab" in index
