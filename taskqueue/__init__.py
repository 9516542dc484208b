"""taskqueue: the shared pieces behind emitter_of_tasks.py, listening_worker.py and
task_report.py.

Read in this order to follow one task from a CSV row to its ack:
config -> tasks -> feed -> topology -> connection -> publisher (emitter side) ->
consumer -> delivery -> slots -> work (child) -> outbox (worker side) -> events -> report,
live and watch.
"""

__version__ = "0.3.0"
