"""taskqueue: the shared pieces behind emitter_of_tasks.py, listening_worker.py,
task_report.py and task_control.py (and their console scripts, commands/), and a small API
for task lists that live in code: ``taskqueue.submit(texts)`` (api.py), and for handlers:
``taskqueue.progress(fraction, note)`` (worker/progress.py).

The folders show the roles. Read in this order to follow one task from a CSV row to its
recorded result: broker/config -> emitter/tasks -> emitter/feed -> broker/topology ->
broker/connection -> emitter/publisher (the emitter's side) -> worker/consumer ->
worker/delivery -> worker/tail (already done?) -> worker/policy -> worker/slots -> worker/work
(worker/child, worker/reaper) -> worker/settlement (record, confirm, ack) -> worker/outbox (the
worker's publishing side) -> wire/record -> results/reader -> results/table (one row per
task) -> results/history, results/waiting -> views/ (report, live view); control/ operates the
queue (pause, resume, cancel, stop-workers, requeue-dead, delete-queue).
"""

from __future__ import annotations

__version__ = "0.4.0"
__all__ = ["Run", "progress", "submit"]
# Where each name lives. (No module is named taskqueue.progress: importing it would make
# ``taskqueue.progress`` the module instead of the function.)
_HOMES = {"Run": "taskqueue.api", "submit": "taskqueue.api",
          "progress": "taskqueue.worker.progress"}


def __getattr__(name: str):  # imports only when a name is used: the scripts start fast
    if name in _HOMES:
        import importlib

        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # found once: a handler calling progress() often pays once
        return value
    raise AttributeError(name)
