"""The emitter's side: CSV rows to tasks (tasks), read on a thread (feed), published with confirms
(publisher), shown as it goes (progress).
"""
