#!/usr/bin/env python3
"""Take tasks from the queue, work (1 s per '.' by default), ack each one when it is done.

    python listening_worker.py                      # run as many copies as you like
    python listening_worker.py --name alice --exit-when-idle 10
    python listening_worker.py --handler mytasks:resize --concurrency 4 --task-timeout 60
    python listening_worker.py --command "convert {} -resize 50% small/{}"

Installed with pip, the same command is ``taskqueue-worker`` (same options).
"""

from taskqueue.commands.worker import entry

if __name__ == "__main__":
    entry()
