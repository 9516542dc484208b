"""Where an emitter run got to in its file, for ``--resume``: the row through which every row
was confirmed, and the row through which rows may have been published (the horizon), so that
a resumed run types the rows an earlier emitter may have sent as published again
(wire/messages.py) and the others as first publishes. A run that ended with every publish
answered (confirmed or refused) also keeps the rows the broker refused and the last row it
read: --resume then publishes exactly those rows again, and goes on after that row."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from taskqueue.emitter.shared_files import read_text_retrying, replace_retrying

# Refused rows kept one by one for --resume; beyond this, the resume point is the watermark.
MAX_REFUSED_KEPT = 10_000


class ResumeState:
    """Per (file, queue): the row through which every row was confirmed, in a small JSON file
    of its own under ``<logs>/emitter_state/`` (one file per key, so emitters working on other
    files never overwrite each other's point). Written atomically: a crash leaves the old or
    the new value."""

    def __init__(self, directory: Path, source: str, queue: str) -> None:
        self.key = f"{Path(source).resolve()}|{queue}"
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:16]
        self.path = directory / "emitter_state" / f"{Path(source).name[:40]}-{digest}.json"
        self._legacy = directory / "emitter_state.json"  # one shared file, before 2026-11-29

    def _saved(self) -> dict | None:
        """This file's saved point as written, or None when there is none (or it is
        unreadable)."""
        try:
            entry = json.loads(read_text_retrying(self.path))
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def confirmed_through(self) -> int:
        entry = self._saved()
        if entry is None:
            entry = self._legacy_entry()
        return int(entry.get("confirmed_through", 0))

    def known(self) -> bool:
        """Whether an earlier run of this file on this queue saved a resume point."""
        return self._saved() is not None or bool(self._legacy_entry())

    def refused_rows(self) -> tuple[list[int], int] | None:
        """After a run that ended with every publish answered: the rows the broker refused
        (ascending) and the last row it read, which --resume publishes again and goes on
        after. None: not kept (the end was not clean, too many refused, an older version)."""
        entry = self._saved() or {}
        rows, through = entry.get("refused"), entry.get("read_through")
        if (not isinstance(rows, list) or not isinstance(through, int)
                or not all(isinstance(row, int) for row in rows)):
            return None
        return sorted(rows), through

    def _legacy_entry(self) -> dict:
        try:
            return json.loads(self._legacy.read_text(encoding="utf-8")).get(self.key, {})
        except (OSError, ValueError, AttributeError):
            return {}

    def unfinished_run(self) -> str | None:
        """The run an interrupted emitter left unfinished: --resume goes on with it (its tasks
        already done are then recognised, not run again)."""
        entry = self._saved() or {}
        run = entry.get("run_id")
        return run if isinstance(run, str) and run and not entry.get("complete") else None

    def published_through(self) -> int | None:
        """The row through which an earlier emitter of the unfinished run may have published
        (None: not known, from a version that did not say: any row may have been)."""
        value = (self._saved() or {}).get("published_through")
        return value if isinstance(value, int) else None

    def save(self, confirmed_through: int, complete: bool, run_id: str = "",
             published_through: int | None = None, refused: list[int] | None = None,
             read_through: int | None = None) -> None:
        """*refused* and *read_through* only at a clean end (see ``refused_rows``)."""
        entry: dict[str, object] = {
            "key": self.key, "confirmed_through": confirmed_through, "complete": complete,
            "run_id": run_id, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "published_through": published_through}
        if refused is not None and read_through is not None:
            entry["refused"], entry["read_through"] = refused, read_through
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1), encoding="utf-8")
        try:
            replace_retrying(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

