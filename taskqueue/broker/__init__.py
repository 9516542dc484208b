"""Talking to RabbitMQ: settings (config), connections that fail over and reconnect (connection),
the queues declared or adopted (topology).
"""
