"""Where an emitter run got to in its file, for ``--resume``: the row through which every row
was confirmed, and the row through which rows may have been published (the horizon), so that
a resumed run types the rows an earlier emitter may have sent as published again
(wire/messages.py) and the others as first publishes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from taskqueue.emitter.shared_files import read_text_retrying, replace_retrying


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

    def confirmed_through(self) -> int:
        try:
            entry = json.loads(read_text_retrying(self.path))
        except (OSError, ValueError):
            entry = self._legacy_entry()
        return int(entry.get("confirmed_through", 0))

    def _legacy_entry(self) -> dict:
        try:
            return json.loads(self._legacy.read_text(encoding="utf-8")).get(self.key, {})
        except (OSError, ValueError, AttributeError):
            return {}

    def unfinished_run(self) -> str | None:
        """The run an interrupted emitter left unfinished: --resume goes on with it (its tasks
        already done are then recognised, not run again)."""
        try:
            entry = json.loads(read_text_retrying(self.path))
        except (OSError, ValueError):
            return None
        run = entry.get("run_id")
        return run if isinstance(run, str) and run and not entry.get("complete") else None

    def published_through(self) -> int | None:
        """The row through which an earlier emitter of the unfinished run may have published
        (None: not known, from a version that did not say: any row may have been)."""
        try:
            entry = json.loads(read_text_retrying(self.path))
        except (OSError, ValueError):
            return None
        value = entry.get("published_through")
        return value if isinstance(value, int) else None

    def save(self, confirmed_through: int, complete: bool, run_id: str = "",
             published_through: int | None = None) -> None:
        entry = {"key": self.key, "confirmed_through": confirmed_through, "complete": complete,
                 "run_id": run_id, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "published_through": published_through}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1), encoding="utf-8")
        try:
            replace_retrying(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

