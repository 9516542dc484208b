"""The handler of scripts/screenshots.py's demo run: 0.15 s per '.', and "boom" files fail."""

import time


def resize(text: str) -> str:
    time.sleep(0.15 * text.count("."))
    if "boom" in text:
        raise ValueError(f"cannot decode {text.split()[1]!r}: not a JPEG file")
    return f"{text.split()[1]} -> 640x480"
