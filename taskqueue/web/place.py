"""Where the dashboard's feed is in the results stream (feed.py), and whether a stream it reads
again is still the one it read. Pure: offsets and bodies in, a verdict out.

A stream deleted and made again (``task_control.py delete-queue``, ``rabbitmqctl
delete_queue``) numbers its messages from 0 again, and the broker sends a reading exactly from
the offset asked for, waiting for it if the stream is not that long (seen on 3.10): resumed
"after the last message read", the feed would skip the new stream's first messages, or hear
nothing at all until the new stream grew past the old one's length. So a reading that resumes
asks for the last message read once more and compares it (a digest of its body): the same
message at that offset is the same stream (a stream never gives an offset to two messages);
another, or an offset below it, is a stream made anew, whose figures start over. An offset
above it means retention removed it meanwhile (after 30 days or 20 GB): the same stream as far
as anyone can tell, read on.
"""

from __future__ import annotations

import hashlib
from enum import Enum


class Verdict(Enum):
    NEW = "new"  # count it
    SEEN = "seen"  # the last message read, read again to compare: counted before
    OTHER = "other"  # the stream is not the one read before: start over from its first message


class StreamPlace:
    """The last message read (its offset and a digest of its body); ``start()`` says where a
    reading begins, ``read()`` judges each message it gets."""

    def __init__(self) -> None:
        self.last: tuple[int, bytes] | None = None
        self._checking = False  # the next message read is compared with ``last``

    @property
    def next_offset(self) -> int:
        return 0 if self.last is None else self.last[0] + 1

    def start(self) -> int | str:
        """The x-stream-offset of a new reading: the first message, or the last one read."""
        self._checking = self.last is not None
        return "first" if self.last is None else self.last[0]

    def read(self, offset: int | None, body: bytes) -> Verdict:
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if self._checking and self.last is not None and offset is not None:
            self._checking = False
            last_offset, last_digest = self.last
            if offset < last_offset or (offset == last_offset and digest != last_digest):
                return Verdict.OTHER
            if offset == last_offset:
                return Verdict.SEEN
        if offset is not None:
            self.last = (offset, digest)
        return Verdict.NEW
