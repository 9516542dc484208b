#!/usr/bin/env python3
"""The test suite, with Python alone (Windows, conda, anywhere): `python scripts/check.py`.

Runs, stopping at the first that fails: ruff; mypy (pyproject.toml's [tool.mypy]), once for
POSIX and once for Windows, since each skips the other's branches; the fast tier (the tests
marked fast: no broker, no connection, no process; under a minute); then the rest of the suite
against the real broker on 127.0.0.1:5672. With the interpreter that runs this script (the
active venv or conda environment). `make test` runs this.

`--fast` stops after the fast tier (`make test-fast`: everything that needs no broker).
Other arguments go to pytest, which then runs once over what they select instead of the two
tiers, e.g. `python scripts/check.py -m cluster`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-q", "tests"]


def steps(args: list[str]) -> list[list[str]]:
    """The commands to run, in order, for this script's *args*."""
    checks = [[sys.executable, "-m", "ruff", "check", "."],
              [sys.executable, "-m", "mypy"],
              [sys.executable, "-m", "mypy", "--platform", "win32"]]
    if args == ["--fast"]:
        return [*checks, [*PYTEST, "-m", "fast"]]
    if args:
        return [*checks, [*PYTEST, *args]]
    # The broker tier names its slowest tests at the end: CI's hour is a budget (.ci/run).
    return [*checks, [*PYTEST, "-m", "fast"], [*PYTEST, "-m", "not fast", "--durations=20"]]


def main() -> int:
    for command in steps(sys.argv[1:]):
        status = subprocess.run(command, cwd=ROOT).returncode
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
