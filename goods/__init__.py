"""The goods command service: goods in its own database, events via the outbox."""
