"""A stranger's text on a terminal line: one line, and nothing a terminal would act on.

``visible`` (shown.py) turns control characters into stand-ins (ESC, BEL: no colour, no bell,
no moved cursor), except tab and newline, which a page may keep; on a terminal line they are
stand-ins too (a newline would break the view's lines), and so are the bidirectional controls
(a right-to-left override would turn the rest of the line around on a terminal that honours
it: there is no ``<bdi>`` here to keep it inside).
"""

from __future__ import annotations

import re

from taskqueue.views.shown import stand_in, visible

LINE_BREAKERS = re.compile("[\t\n\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: object) -> str:
    """*text* as one harmless terminal line (every hidden character a visible stand-in)."""
    return LINE_BREAKERS.sub(lambda found: stand_in(found[0]), visible(text))


def progress_words(progress: tuple[float, str] | None, note_chars: int = 40) -> str:
    """``40% step 2 of 5``: a slot's progress in a few words ('' without any)."""
    if progress is None:
        return ""
    fraction, note = progress
    words = f"{100 * fraction:.0f}%"
    if note:
        words += " " + terminal_text(note[:note_chars])
    return words
