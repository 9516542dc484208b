#!/usr/bin/env python3
"""The demo, with Python alone (Windows, conda, anywhere): `python scripts/demo.py`.

Three workers share tasks.csv while the live view shows who does what; then the report prints
the table and writes the timeline picture. Exits when the work is done. `make demo` runs this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUEUE = os.environ.get("DEMO_QUEUE", "demo_task_queue")
SECONDS_PER_DOT = os.environ.get("DEMO_SECONDS_PER_DOT", "0.2")
WORKERS = ("alice", "bob", "carol")


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / name), "--queue", QUEUE, *args]


def main() -> int:
    logs = Path(os.environ.get("TASKQUEUE_LOG_DIR") or ROOT / "logs")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"== 1. three workers start on queue {QUEUE!r} (their logs: {logs}{os.sep}demo-*.out)")
    outputs, workers = [], []
    for name in WORKERS:
        output = open(logs / f"demo-{name}.out", "w", encoding="utf-8")  # noqa: SIM115
        outputs.append(output)
        workers.append(subprocess.Popen(
            script("listening_worker.py", "--name", name, "--seconds-per-dot", SECONDS_PER_DOT,
                   "--exit-when-idle", "3"), stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL))
    print("== 2. the live view: who is doing what (the emitter publishes tasks.csv meanwhile)")
    view = subprocess.Popen(script("task_report.py", "--watch", "--until-done"))
    time.sleep(1.0)  # let the view subscribe first, so it sees the run's size
    with open(logs / "demo-emitter.out", "w", encoding="utf-8") as emitter_output:
        emitted = subprocess.run(script("emitter_of_tasks.py", "--file", str(ROOT / "tasks.csv"),
                                        "--no-admin"), stdout=emitter_output,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if emitted.returncode != 0:
        view.terminate()
        print((logs / "demo-emitter.out").read_text(encoding="utf-8"), file=sys.stderr)
        return emitted.returncode
    view.wait()
    codes = [worker.wait() for worker in workers]
    for output in outputs:
        output.close()
    if any(codes):
        print(f"a worker failed (exit codes {codes}); see {logs}{os.sep}demo-*.out",
              file=sys.stderr)
        return max(codes)
    print("== 3. who did what")
    return subprocess.run(script("task_report.py")).returncode


if __name__ == "__main__":
    sys.exit(main())
