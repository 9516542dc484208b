"""taskqueue: the shared pieces behind emitter_of_tasks.py and listening_worker.py.

Read in this order to follow one task from a CSV row to its ack:
config -> tasks -> connection -> publisher (emitter side) -> consumer (worker side) -> report.
"""
