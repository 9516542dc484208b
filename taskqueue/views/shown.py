"""Text from tasks and records, made harmless to show (issue 30, item 4). A task's text, a
worker's name or an error can hold anything a producer put in it; shown, it must stay text,
be seen for what it is, and leave the page around it alone:

* *stand-ins*: control characters (C0 but tab and newline, DEL, C1) and what XML 1.0 or UTF-8
  cannot carry (lone surrogates, which only a stranger's JSON can bring as ``\\ud800``, and
  U+FFFE, U+FFFF) are replaced by their escape as Python writes it: NUL is ``\\x00``, ESC
  ``\\x1b``, a lone surrogate ``\\ud800``. Escapes, not the pictures of the U+2400 block: those
  are missing from common fonts (a row of empty boxes tells nothing), an escape reads anywhere;
  the page sets them apart in their own style;
* *isolated*: bidirectional text (a right-to-left override, U+202E) acts inside the text only,
  never on the page's own words after it: ``<bdi>`` in HTML, FSI … PDI in the SVG.

The page's script (web/static/app.js ``standIn``) applies the same rule to what it fetches.
"""

from __future__ import annotations

import re
from html import escape

HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
FIRST_STRONG_ISOLATE, POP_DIRECTIONAL_ISOLATE = "\u2068", "\u2069"


def stand_in(char: str) -> str:
    """The visible stand-in of one HIDDEN character."""
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: object) -> str:
    """*text* with every HIDDEN character replaced by its stand-in: valid in XML 1.0 and UTF-8."""
    return HIDDEN.sub(lambda found: stand_in(found[0]), str(text))


def isolated(text: object) -> str:
    """For SVG and plain text: *text* visible, between the first-strong and pop isolates, so
    that its direction cannot spill over what follows."""
    return f"{FIRST_STRONG_ISOLATE}{visible(text)}{POP_DIRECTIONAL_ISOLATE}"


def html(text: object) -> str:
    """HTML for *text*: escaped, isolated in a ``<bdi>``, each stand-in in a ``span.ctl`` whose
    title names the character (for templates: ``{% raw shown(task) %}``)."""
    parts, last = ["<bdi>"], 0
    text = str(text)
    for found in HIDDEN.finditer(text):
        char = found[0]
        parts.append(escape(text[last:found.start()]))
        parts.append(f'<span class="ctl" title="U+{ord(char):04X}">{escape(stand_in(char))}'
                     "</span>")
        last = found.end()
    parts.append(escape(text[last:]))
    parts.append("</bdi>")
    return "".join(parts)
