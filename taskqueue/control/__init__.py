"""Operating the queue (``task_control.py``): pause, resume, cancel a run or some of its tasks,
stop workers, and put dead-lettered tasks back. State that must outlive a command (paused,
cancelled runs and tasks) lives in RabbitMQ, in the stream ``<queue>.control`` that every
worker reads from its start.

  state.py     the commands and what they mean to a worker: pure
  listener.py  the worker's side: reads the stream, acts, answers
  commands.py  the sending side: publish a command, count the workers that answer
  requeue.py   requeue-dead: <queue>.dead back to the queue, confirmed, memory flat
"""
