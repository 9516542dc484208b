"""The worker's side: deliveries into slots and acks (consumer, delivery), what becomes of a task
(policy), the work itself (slots, work, child, reaper), and its publishing connection (outbox).
"""
