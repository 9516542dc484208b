"""Who did what: a run's events tallied (run_tally) and reported (report, report_text,
timeline), the queue's status and runs (store), and the live view: its tally (live_tally),
drawn (live_screen, live) and watched (watch). Worker and slot names: names. The events
themselves are the wire's (taskqueue/wire/events.py).
"""
