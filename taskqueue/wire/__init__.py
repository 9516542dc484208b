"""The wire vocabulary: what every side writes to or reads from the broker, in one place at the
bottom of the package (it imports nothing of taskqueue's), so the worker, the emitter, the
results readers and the views agree on it without importing one another.

  events.py    event ids, the task and run event shapes, their JSON encoding, seen ids
  messages.py  a task message's id (and the row in it), its type, the check-from header
  record.py    the results record: its groups, kinds, marks, task keys, run ids, the stream's
               arguments and retention
"""
