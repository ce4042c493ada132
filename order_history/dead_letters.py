"""Poison messages: sent to `<topic>.dlq` and recorded in the `dead_letters` table, then skipped.

The table keeps the message (key and value) beside its origin and reason, for
`order-history dlq` (order_history/dlq.py) to show and replay.

A dead letter is the raw message (value and key as they came) with headers
`dlq.reason`, `dlq.original.topic`, `dlq.original.partition` and
`dlq.original.offset`. It is sent, and acknowledged by Kafka within
`delivery_timeout`, inside the transaction that advances the positions past
it: if Kafka does not take it in time, nothing of that transaction commits
and the message is dead-lettered again on the next try (at least once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from shared.database import Connection
from shared.events import dlq_topic
from shared.kafka import deliver

log = logging.getLogger(__name__)

_RECORD = """INSERT INTO dead_letters (topic, partition, "offset", reason, message_key, message_value)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"""


def dlq_headers(message: ConsumerRecord, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.original.topic", message.topic.encode()),
        ("dlq.original.partition", str(message.partition).encode()),
        ("dlq.original.offset", str(message.offset).encode()),
    ]


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer | None, delivery_timeout: float) -> None:
        """`producer` None: record only, send nothing (see HistoryConsumer's publish_dead_letters)."""
        self.producer = producer
        self.delivery_timeout = delivery_timeout

    async def record(self, conn: Connection, poison: Sequence[tuple[ConsumerRecord, str]]) -> None:
        """Send each (message, reason) to its DLQ topic and record it; call inside the transaction
        that advances the positions past these messages."""
        futures = []
        level, said = (
            (logging.WARNING, "poison message sent to DLQ")
            if self.producer is not None
            else (logging.INFO, "poison message recorded")
        )
        for message, reason in poison:
            if self.producer is not None:
                futures.append(
                    await self.producer.send(
                        dlq_topic(message.topic),
                        value=message.value,
                        key=message.key,
                        headers=dlq_headers(message, reason),
                    )
                )
            log.log(
                level,
                said,
                extra={
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "reason": reason,
                    **identity(message.value),
                },
            )
        await deliver(futures, self.delivery_timeout)
        await conn.executemany(_RECORD, [(m.topic, m.partition, m.offset, r, m.key, m.value) for m, r in poison])


def identity(value: bytes | None) -> dict[str, str]:
    """event_id and event_type of a poison message, when its value names them (it may not be JSON at all)."""
    try:
        raw = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: str(raw[k])[:100] for k in ("event_id", "event_type") if k in raw}
