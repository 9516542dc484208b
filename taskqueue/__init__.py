"""taskqueue: the shared pieces behind emitter_of_tasks.py, listening_worker.py,
task_report.py and task_control.py (and their console scripts, commands/).

The folders show the roles. Read in this order to follow one task from a CSV row to its ack:
broker/config -> emitter/tasks -> emitter/feed -> broker/topology -> broker/connection ->
emitter/publisher (the emitter's side) -> worker/consumer -> worker/delivery -> worker/policy ->
worker/slots -> worker/work (worker/child, worker/reaper) -> worker/outbox (the worker's side)
-> views/events -> views/store -> views/report, views/live and views/watch; control/ operates
the queue (pause, resume, cancel, stop-workers, requeue-dead).
"""

__version__ = "0.3.0"
