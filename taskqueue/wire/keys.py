"""A task's rate-limit key (the header ``x-key``): one rule for the emitter that sets it, the
worker that reads it and the arbiter that counts it (control/ratelimit.py), so that a key any
producer sends is counted under the same name everywhere, and none is too long to be asked for.
"""

from __future__ import annotations

import hashlib

MAX_KEY_BYTES = 256  # of a task's rate-limit key (the header X_KEY), in UTF-8
KEY_DIGEST_HEX = 12  # of the sha1 that ends a key cut to MAX_KEY_BYTES


def rate_key(text: object) -> str:
    """A task's rate-limit key from the text of its cell (or ``submit(keys=)``): surrounding
    blanks dropped, blank is no key (""). At most MAX_KEY_BYTES of UTF-8: a longer key is cut
    at a character's boundary and ends with ``~`` and the first KEY_DIGEST_HEX hex digits of
    the whole key's sha1, so that two long keys with the same start stay two keys.
    ValueError for text UTF-8 cannot carry (a lone surrogate, which only Python can hand us)."""
    key = "" if text is None else str(text).strip()
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the key {key[:40]!r} is not valid text (a lone surrogate?)") from None
    if len(data) <= MAX_KEY_BYTES:
        return key
    suffix = "~" + hashlib.sha1(data).hexdigest()[:KEY_DIGEST_HEX]
    return data[:MAX_KEY_BYTES - len(suffix)].decode("utf-8", "ignore") + suffix


def received_key(value: object) -> str:
    """A key as another producer (or an older worker's ask) sent it, cut as ``rate_key`` cuts
    it; never raises: bytes are read as UTF-8, a lone surrogate (JSON's ``\\ud800``) replaced."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    return rate_key(text.encode("utf-8", "replace").decode("utf-8"))
