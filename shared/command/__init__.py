"""The command side both `order` and `goods` are built from: the HTTP plumbing of a command API,
the service layer that writes state and outbox in one transaction, the outbox relay to Kafka,
command status and resync.
"""
