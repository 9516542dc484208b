"""The results record: every attempt's outcome, kept on the broker in the stream
``<queue>.results`` and confirmed there before the task's ack (record -> index -> reader ->
table -> waiting). Anyone may read it, from any host, as often as they like: nobody moves it.
"""
