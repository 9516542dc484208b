"""Progress's pure parts (issue 31, item 2), without a broker: a program's progress lines
found in its output however the reads cut it, the values checked and bounded, a child's
calls coalesced, and what the views make of a snapshot's progress."""

from __future__ import annotations

import threading
import time
from collections import Counter

from taskqueue.views.live import LiveState
from taskqueue.views.terminal import progress_words, terminal_text
from taskqueue.wire.progress import MAX_NOTE, clean_note, fraction_of, parse_line, read_progress
from taskqueue.worker.command import ProgressLines
from taskqueue.worker.progress import ChildReporter, ProgressBox

OUTPUT = (b"first\nprogress: 20% step 1 of 5\r\nprogress: 0.4 step 2 of 5\n"
          b"progress: 40 is not a fraction\nxprogress: 0.5\nnot progress: 0.5\nlast")


def test_progress_lines_are_taken_out_however_the_reads_cut_the_output():
    for size in (1, 2, 3, 7, 64, len(OUTPUT)):
        box = ProgressBox()
        lines = ProgressLines(box)
        kept = b"".join(lines.feed(OUTPUT[i:i + size]) for i in range(0, len(OUTPUT), size))
        kept += lines.end()
        assert kept == b"first\nxprogress: 0.5\nnot progress: 0.5\nlast", size
        assert box.value() == {"fraction": 0.4, "note": "step 2 of 5"}, size


def test_a_long_line_is_output_whatever_it_says_and_the_last_line_counts_without_newline():
    box = ProgressBox()
    lines = ProgressLines(box)
    long_line = b"progress: 0.5 " + b"x" * 5000 + b"\n"
    assert lines.feed(long_line[:3000]) + lines.feed(long_line[3000:]) == long_line
    assert box.value() is None
    assert lines.feed(b"progress: 1") + lines.end() == b""
    assert box.value() == {"fraction": 1.0, "note": ""}


def test_a_line_is_progress_only_if_it_matches_exactly():
    assert parse_line("progress: 40%").fraction == 0.4
    assert parse_line("progress:.5 half").note == "half"
    assert parse_line("progress: 150%").fraction is None, "a progress line, ignored"
    for line in ("Progress: 40%", " progress: 40%", "progress: forty", "progress: 4e-1",
                 "progress: -0.5", "progress:", "progress: 40%x"):
        assert parse_line(line) is None, line


def test_fractions_and_notes_are_checked_and_bounded():
    assert [fraction_of(v) for v in (0, 1, 0.25, True, 1.01, -0.1, float("nan"), "0.5")] == \
        [0.0, 1.0, 0.25, None, None, None, None, None]
    note = clean_note("\ud800" + "é" * 10_000)
    assert note.startswith("?é") and len(note.encode("utf-8")) <= MAX_NOTE + 3
    assert read_progress({"fraction": 2, "note": "x"}) is None
    assert read_progress(["not", "a", "dict"]) is None
    assert read_progress({"fraction": 0.5, "note": 7}) == (0.5, "7")


class TurnsCounted:
    """A lock that counts the turns each thread takes at it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.turns: Counter[int] = Counter()

    def __enter__(self) -> bool:
        self.turns[threading.get_ident()] += 1
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


def test_a_childs_many_calls_are_coalesced_and_its_last_sent_before_its_answer():
    sent: list[object] = []
    lock = TurnsCounted()
    reporter = ChildReporter(sent.append, lock)  # type: ignore[arg-type]
    reporter.task_started()
    before = lock.turns[threading.get_ident()]
    for index in range(10_000):
        reporter.offer(index / 10_000, "step")
    # Never held up: a call waits for nothing, not even the pipe's lock (which the sender
    # thread holds while it sends). Counted, not timed.
    assert lock.turns[threading.get_ident()] == before, "offer() takes no turn at the lock"
    reporter.task_ended()
    assert 1 <= len(sent) <= 5, "coalesced: the latest value, not every call"
    assert sent[-1] == ("progress", {"fraction": 0.9999, "note": "step"})
    reporter.task_ended()
    assert len(sent) <= 5, "nothing twice, nothing between tasks"


def test_a_box_says_when_a_snapshot_has_not_shown_its_latest():
    box = ProgressBox()
    assert not box.fresh()
    box.offer(0.5, "x")
    assert box.fresh() and box.for_snapshot() == {"fraction": 0.5, "note": "x"}
    assert not box.fresh()


def test_the_views_show_a_busy_slots_progress_as_one_harmless_line():
    now = time.time()
    state = LiveState("q")
    state.feed({"kind": "snapshot", "worker": "w", "host": "h", "time": now, "slots": [
        {"slot": "w/1", "state": "busy", "since": now - 1, "row": 3, "task": "t",
         "progress": {"fraction": 0.4, "note": "step\n2\x1b[2J \u202eof 5"}},
        {"slot": "w/2", "state": "busy", "since": now - 1, "row": 4, "task": "t",
         "progress": {"fraction": "lots", "note": "x"}}]})
    line = state.line(now)
    assert line.endswith("w/1 busy row 3 40% step\\x0a2\\x1b[2J \\u202eof 5, w/2 busy row 4")
    screen = "\n".join(state.screen(now, width=200))
    assert "40% step\\x0a2" in screen and "\x1b" not in screen and "\u202e" not in screen
    assert progress_words(None) == "" and terminal_text("a\tb") == "a\\x09b"


def test_a_note_that_cannot_be_text_is_no_note_not_a_failure():
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    assert clean_note(Hostile()) == ""
    assert clean_note(None) == "" and clean_note(42) == "42"
