"""A --command program for tests/test_progress.py: prints progress lines between its output,
waits until the file named by its argument exists, then prints its last progress."""

import sys
import time
from pathlib import Path

print("first line of the result", flush=True)
print("progress: 20% step 1 of 5", flush=True)
print("progress: 40% step 2 of 5", flush=True)
print("not progress: 90%", flush=True)
release = Path(sys.argv[1])
while not release.exists():
    time.sleep(0.02)
print("progress: 1.0 all done", flush=True)
print("last line of the result", flush=True)
