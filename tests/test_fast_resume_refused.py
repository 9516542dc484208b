"""--resume after refused rows, without a broker: what is saved, what is read back, which rows
the file yields again, and how far the resume point goes while they are sent again."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from taskqueue.commands.emitter import row_ranges
from taskqueue.emitter.publisher import ConfirmedPublisher
from taskqueue.emitter.resume import MAX_REFUSED_KEPT, ResumeState
from taskqueue.emitter.tasks import read_tasks
from tests.helpers import write_csv


def test_the_refused_rows_are_kept_only_with_the_last_row_read(tmp_path: Path) -> None:
    state = ResumeState(tmp_path, str(tmp_path / "b2.csv"), "q")
    assert state.refused_rows() is None and not state.known()
    state.save(0, complete=False, run_id="r1", refused=[3, 1, 2], read_through=693)
    assert state.refused_rows() == ([1, 2, 3], 693) and state.known()
    assert state.confirmed_through() == 0 and state.unfinished_run() == "r1"
    state.save(0, complete=False, run_id="r1")  # a periodic save, or an end not clean
    assert state.refused_rows() is None and state.known(), "the watermark alone then"
    entry = json.loads(state.path.read_text())
    entry.update(refused=["1"], read_through=5)  # not ours: ignored, the watermark is used
    state.path.write_text(json.dumps(entry))
    assert state.refused_rows() is None


def test_the_file_yields_the_refused_rows_then_those_after_the_last_read(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "t.csv", [f"row {n}" for n in range(1, 11)])
    rows = [task.row for task in read_tasks(str(csv), skip_through=7, also_rows=[2, 5, 99])]
    assert rows == [2, 5, 8, 9, 10]
    first = {task.row: task.message_id for task in read_tasks(str(csv))}
    again = {task.row: task.message_id for task in read_tasks(str(csv), skip_through=7,
                                                              also_rows=[2, 5])}
    assert again[2] == first[2] and again[5] == first[5], "the same ids as the first time"


def test_row_ranges() -> None:
    assert row_ranges([1, 2, 3]) == "rows 1-3"
    assert row_ranges([7]) == "row 7"
    assert row_ranges([1, 2, 3, 17, 30]) == "rows 1-3, 17, 30"
    assert row_ranges(list(range(1, 40, 2)), most=3) == "rows 1, 3, 5 and 17 more"


def publisher(**fields: object) -> SimpleNamespace:
    """What ConfirmedPublisher.confirmed_through and rows_to_resume read."""
    base: dict[str, object] = dict(_in_flight={}, _resend=[], last_row_read=40,
                                   first_bad_row=None, _replay=[], _replay_next=0, refused=[])
    base.update(fields)
    fake = SimpleNamespace(**base)
    fake.answered_all = ConfirmedPublisher.answered_all.fget(fake)  # type: ignore[attr-defined]
    return fake


def test_refused_rows_not_sent_again_yet_hold_the_resume_point() -> None:
    """A resumed run sends rows 3, 17 and 30 again, then rows after 40: stopped once row 3 is
    confirmed, rows 17 and 30 are still to do (the watermark too stays before 17)."""
    stopped = publisher(_replay=[3, 17, 30], _replay_next=1)
    assert ConfirmedPublisher.confirmed_through(stopped) == 16
    assert ConfirmedPublisher.rows_to_resume(stopped) == [17, 30]
    refused_again = publisher(_replay=[3, 17, 30], _replay_next=3, refused=[17, 44],
                              first_bad_row=17, last_row_read=50)
    assert ConfirmedPublisher.rows_to_resume(refused_again) == [17, 44]
    assert ConfirmedPublisher.confirmed_through(refused_again) == 16


def test_an_end_not_clean_or_too_many_refused_keep_the_watermark() -> None:
    task = SimpleNamespace(row=12)
    assert ConfirmedPublisher.rows_to_resume(publisher(_in_flight={1: task}, refused=[3])) \
        is None, "a confirm outstanding: the watermark"
    assert ConfirmedPublisher.rows_to_resume(publisher(_resend=[task])) is None
    assert ConfirmedPublisher.rows_to_resume(publisher(_in_flight={1: None})) == [], \
        "a run event unconfirmed is no row"
    assert ConfirmedPublisher.rows_to_resume(publisher(refused=None)) is None
    many = list(range(1, MAX_REFUSED_KEPT + 1))
    assert ConfirmedPublisher.rows_to_resume(publisher(refused=many, last_row_read=10**5)) \
        == many
    assert ConfirmedPublisher.rows_to_resume(publisher(
        refused=many, _replay=[10**5 + 1], last_row_read=10**5 + 5)) is None
