#!/usr/bin/env python3
"""Publish tasks (one per CSV row) to a durable RabbitMQ queue, every one confirmed.

    python emitter_of_tasks.py                     # tasks.csv -> task_queue
    python emitter_of_tasks.py --file jobs.csv --resume
    python emitter_of_tasks.py --message "Hello..." --message "Bye."

Installed with pip, the same command is ``taskqueue-emit`` (same options).
"""

from taskqueue.commands.emitter import entry

if __name__ == "__main__":
    entry()
