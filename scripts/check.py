#!/usr/bin/env python3
"""The test suite, with Python alone (Windows, conda, anywhere): `python scripts/check.py`.

Runs ruff, then pytest against the real broker on 127.0.0.1:5672, with the interpreter that
runs this script (the active venv or conda environment). Extra arguments go to pytest, e.g.
`python scripts/check.py -m cluster`. `make test` runs this.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT)
    if lint.returncode != 0:
        return lint.returncode
    args = sys.argv[1:]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "tests", *args],
                          cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
