"""Handlers for tests/test_cancel_one.py (loaded by the workers' handler processes)."""

from __future__ import annotations


def spawn_on_hang(text: str) -> str:
    """``hang PATH``: starts a child that would outlive the handler, writes "HANDLER_PID
    CHILD_PID" to PATH, and hangs; any other text is done at once."""
    import os
    import subprocess
    import sys
    import time

    if not text.startswith("hang "):
        return "did " + text
    path = text.split(" ", 1)[1]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(path + ".tmp", "w", encoding="utf-8") as note:
        note.write(f"{os.getpid()} {child.pid}")
    os.replace(path + ".tmp", path)
    while True:
        time.sleep(60)
