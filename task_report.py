#!/usr/bin/env python3
"""Who did what: collect the workers' task events and print a table and a timeline picture;
or watch the workers live.

    python task_report.py                          # latest run on task_queue
    python task_report.py --queue demo_task_queue --run 20261128-101500-ab12cd
    python task_report.py --csv results.csv        # one row per task: worker, result or error
    python task_report.py --watch                  # live: every worker, its task, the queue

Installed with pip, the same command is ``taskqueue-report`` (same options).
"""

from taskqueue.commands.reporter import entry

if __name__ == "__main__":
    entry()
