#!/usr/bin/env python3
"""Operate the queue from any machine that reaches the broker: put dead tasks back, pause and
resume the workers, cancel a run, stop workers (as SIGTERM would).

    python task_control.py requeue-dead                       # every task in <queue>.dead
    python task_control.py requeue-dead --reason "timed out" --run 20261130-101500-ab12cd
    python task_control.py pause                              # finish what is in hand
    python task_control.py resume
    python task_control.py cancel --run 20261130-101500-ab12cd
    python task_control.py stop-workers [--name alice]

Installed with pip, the same command is ``taskqueue-control`` (same options).
"""

from taskqueue.commands.control import entry

if __name__ == "__main__":
    entry()
