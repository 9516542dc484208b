"""Worker and slot names as the views show them: a slot is ``worker/n`` (``alice/3``), and
names sort naturally (w2 before w10). Shared by the report and the live views."""

from __future__ import annotations

import re


def natural_key(name: str) -> list:
    """w2 before w10: digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def worker_of(slot: str) -> str:
    """``alice/3`` -> ``alice`` (a slot's worker)."""
    return slot.split("/", 1)[0]
