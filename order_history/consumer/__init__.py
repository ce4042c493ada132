"""The consumer process: reads the event topics and applies them through `order_history.projection`.

Delivery is at least once; applying is idempotent (versions and positions are
kept in the read model), so the read model sees each event exactly once.
"""
