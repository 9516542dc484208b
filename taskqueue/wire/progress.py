"""A task's progress, as every side carries it: a fraction from 0 to 1 and a short note
(``0.4``, ``"step 2 of 5"``). A handler gives it with ``taskqueue.progress`` (worker/progress.py),
a ``--command`` program with a line on its stdout (``progress: 40% step 2 of 5``); the worker's
live snapshots show each busy slot's latest, and the attempt's record keeps the last one.

On the wire it is ``{"fraction": 0.4, "note": "step 2 of 5"}``. The note is a stranger's text:
kept as data (the views show its control characters as stand-ins, views/shown.py), cut to
``MAX_NOTE`` bytes, and made valid UTF-8 (a lone surrogate would fail the JSON's encoding).
"""

from __future__ import annotations

import math
import re

from taskqueue.wire.events import cap_text

MAX_NOTE = 200  # bytes of a note kept: a snapshot lists every slot, it stays small
MAX_LINE = 1024  # bytes: a longer line of a program's output is never a progress line
# ``progress: 40%``, ``progress: 40.5 %``, ``progress: 0.4``, each with an optional note after a
# blank: the whole line (its end of line aside) must match, else it is ordinary output.
PROGRESS_LINE = re.compile(r"progress:[ \t]*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*(%?)"
                           r"(?:[ \t]+(.*))?")


def fraction_of(value: object) -> float | None:
    """*value* as a fraction from 0 to 1, or None when it is not one (a bool, NaN, 1.5)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    fraction = float(value)
    if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
        return None
    return fraction


def clean_note(note: object) -> str:
    """A note as it is sent: text, valid UTF-8, cut at MAX_NOTE bytes (an ellipsis says so)."""
    if isinstance(note, str) or note is None:
        text = note or ""
    else:
        try:
            text = str(note)
        except Exception:  # a stranger's __str__, or an int too long to print
            text = ""  # a note that cannot be text is no note: never the task's failure
    if len(text) > MAX_NOTE:  # cut first: a 10 MB note costs no more than a short one
        text = text[:MAX_NOTE]
    text = text.encode("utf-8", "replace").decode("utf-8")
    return cap_text(text, MAX_NOTE)


def progress_field(fraction: float, note: object) -> dict:
    """The wire form (snapshot slot, record)."""
    return {"fraction": round(fraction, 4), "note": clean_note(note)}


def read_progress(value: object) -> tuple[float, str] | None:
    """(fraction, note) from a snapshot's or a record's field, or None: what another worker
    sent is checked, never trusted (a wrong shape shows as no progress)."""
    if not isinstance(value, dict):
        return None
    fraction = fraction_of(value.get("fraction"))
    if fraction is None:
        return None
    return fraction, clean_note(value.get("note") or "")


class ProgressLine:
    """One line of a program's output that is a progress line: its fraction (None when the
    number is out of range: the line is still not output, and is ignored) and its note."""

    __slots__ = ("fraction", "note")

    def __init__(self, fraction: float | None, note: str) -> None:
        self.fraction, self.note = fraction, note


def parse_line(line: str) -> ProgressLine | None:
    """*line* (without its end of line) as a progress line, or None when it is output."""
    if not line.startswith("progress:") or len(line) > MAX_LINE:
        return None
    found = PROGRESS_LINE.fullmatch(line)
    if found is None:
        return None
    number = float(found[1])
    fraction = fraction_of(number / 100 if found[2] else number)
    return ProgressLine(fraction, found[3] or "")
