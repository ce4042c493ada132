"""Kafka's committed offsets: written for lag tools only, never read back.

The positions the consumer resumes from are the read model's (assignment.py),
advanced in the same transactions as the changes their events made. Kafka's
committed offsets follow them after the database commit, best effort and at
most once a second for every lane's partitions at once: a commit lost or
refused costs nothing but a lag tool's view for a second.
"""

from __future__ import annotations

import contextlib
import time

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from order_history.consumer.clients import Clients
from order_history.projection.apply import Records


class KafkaCommits:
    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self._last_kafka_commit = 0.0
        self._applied_ends: dict[TopicPartition, int] = {}  # applied, not yet committed to Kafka

    async def applied(self, records: Records) -> None:
        """These records are applied: commit them (with the other lanes') if the last commit is a second old."""
        c = self.clients
        assert c.consumer is not None
        for tp, messages in records.items():
            self._applied_ends[tp] = messages[-1].offset + 1
        now = time.monotonic()
        if now - self._last_kafka_commit < 1.0:
            return
        self._last_kafka_commit = now
        assigned = c.consumer.assignment()
        offsets = {tp: end for tp, end in self._applied_ends.items() if tp in assigned}
        self._applied_ends.clear()
        with contextlib.suppress(KafkaError):
            await c.consumer.commit(offsets)
