"""Small files several processes read and replace at once (the emitter's resume points).

On POSIX, replacing a file others have open just works. On Windows it fails (PermissionError)
while another process holds the file open: a second emitter reading the point, a search
indexer, an antivirus. They let go within milliseconds, so a replace is tried again for a
moment before it gives up (the caller then says so in one line). Reading meets the same
moment from the other side: while a replace is under way, opening the file fails with
PermissionError too, which is not "no file" and must not read as one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

REPLACE_ATTEMPTS, REPLACE_PAUSE_SECONDS = 40, 0.025  # 1 s at most


def replace_retrying(source: Path, target: Path, attempts: int = REPLACE_ATTEMPTS) -> None:
    """``os.replace``, tried again while it meets PermissionError (see module doc)."""
    for attempt in range(attempts):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if attempt == attempts - 1:
                raise
            time.sleep(REPLACE_PAUSE_SECONDS)



def read_text_retrying(path: Path, attempts: int = REPLACE_ATTEMPTS) -> str:
    """``path.read_text()``, tried again while it meets PermissionError (see module doc);
    FileNotFoundError and every other error are raised at once."""
    for _ in range(attempts - 1):
        try:
            return path.read_text(encoding="utf-8")
        except PermissionError:
            time.sleep(REPLACE_PAUSE_SECONDS)
    return path.read_text(encoding="utf-8")
