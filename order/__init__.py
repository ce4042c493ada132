"""The order command service: orders in its own database, events via the outbox."""
