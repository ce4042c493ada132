"""Records the consumer will not apply: dead-lettered (`<topic>.dlq` and the `dead_letters` table), or parked.

The rule, for every record whatever it holds: it is applied, or dead-lettered,
or, when even that is impossible, parked; and its position advances past it in
the transaction that records it. No record stops, loops or holds a partition
(docs/reliability.md, "Every record on a topic").

A dead letter is the raw message (value and key as they came) sent to its DLQ
topic with headers `dlq.reason`, `dlq.original.topic`,
`dlq.original.partition` and `dlq.original.offset`, and recorded in the table
with its origin and reason, for `order-history dlq` to show and replay. It is
sent, and acknowledged by Kafka within `delivery_timeout`, inside the
transaction that advances the positions past it: if Kafka does not take it in
time, nothing of that transaction commits and the message is dead-lettered
again on the next try (at least once).

A parked record is recorded in the table only (`parked`, with the reason it is
not on the DLQ topic): a record with neither key nor value (no Kafka client
sends one), a copy over the dead-letter producer's size limit, a DLQ topic that
is missing or refuses it, a batch the Kafka client cannot read, a copy Kafka
did not acknowledge on the last try (`park_undelivered`), or a record an
operator skipped. The table keeps its origin, both reasons, the sizes and
SHA-256 of its key and value, and at most KEPT_VALUE_BYTES of the value.

Each row also names, where the record says, the entity it is about and the
order it concerns (`subject`; migration 0014), so that `order-history explain`
finds the dead letters of an order and of its goods.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, UnknownTopicOrPartitionError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from shared.database import Connection
from shared.events import GOODS_TOPIC, ORDER_TOPIC, dlq_topic
from shared.kafka import DeliveryTimeout

log = logging.getLogger(__name__)

# The largest copy the dead-letter producer sends (its max_request_size; the
# brokers' default message.max.bytes is about the same).
DLQ_MAX_BYTES: Final = 1024 * 1024
# What the table keeps of a record's key and value: a dead letter's whole value
# fits; of a larger one, the head.
KEPT_KEY_BYTES: Final = 64 * 1024
KEPT_VALUE_BYTES: Final = DLQ_MAX_BYTES

RECORD = """INSERT INTO dead_letters (topic, partition, "offset", reason, message_key, message_value,
                                      parked, parked_reason, key_size, value_size, value_sha256, entity_id, order_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING"""
# The ids a bigint column holds; a larger one names no entity of ours.
_BIGINT: Final = range(-(2**63), 2**63)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record the consumer will not apply: why, and (`park`) why it cannot even go to the DLQ topic."""

    reason: str
    park: str | None = None


@dataclass
class Recorded:
    """What `DeadLetters.record` did: how many records went to the DLQ topics, how many were parked."""

    dead_lettered: int = 0
    parked: int = 0


def dlq_headers(message: ConsumerRecord, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.original.topic", message.topic.encode()),
        ("dlq.original.partition", str(message.partition).encode()),
        ("dlq.original.offset", str(message.offset).encode()),
    ]


def stand_in(topic: str, partition: int, offset: int) -> ConsumerRecord:
    """A record of unknown content at an offset (one the Kafka client could not read), to be parked."""
    return ConsumerRecord(topic, partition, offset, -1, 0, None, None, None, -1, -1, ())


def unsendable(message: ConsumerRecord, reason: str) -> str | None:
    """Why the copy of `message` cannot go to a DLQ topic at all (None: it can be tried).

    Decided from the record alone, so that a rebuild (which sends no copies) parks the same records.
    """
    if message.key is None and message.value is None:
        return "it has neither a key nor a value, and Kafka clients send no such record"
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(message.key, message.value, dlq_headers(message, reason))
    if size > DLQ_MAX_BYTES:
        return f"its copy is too large for the DLQ topic: {size} bytes, over the {DLQ_MAX_BYTES} the producer sends"
    return None


def row(message: ConsumerRecord, rejected: Rejected, parked: str | None) -> tuple[object, ...]:
    """The table's row for a record: its origin, the reasons, what is kept of it."""
    key, value = message.key, message.value
    return (
        message.topic,
        message.partition,
        message.offset,
        rejected.reason,
        None if key is None else key[:KEPT_KEY_BYTES],
        None if value is None else value[:KEPT_VALUE_BYTES],
        parked is not None,
        parked,
        None if key is None else len(key),
        None if value is None else len(value),
        None if value is None else hashlib.sha256(value).digest(),
        *subject(message.topic, key, value),
    )


def _an_id(value: object) -> int | None:
    return value if type(value) is int and value in _BIGINT else None


def subject(topic: str, key: bytes | None, value: bytes | None) -> tuple[int | None, int | None]:
    """(entity_id, order_id) of a record, as far as it says: the entity from its key (the aggregate
    id as a decimal string, as producers key events), else from its value's aggregate_id; the order
    it concerns: on an order topic the entity, on a goods topic its value's data.order_id.
    `topic` may carry the deployment's prefix. Never raises, whatever the record holds: recording
    it must not fail."""
    try:
        return _subject(topic, key, value)
    except Exception:  # nothing a record holds may stop it from being recorded
        return None, None


def _subject(topic: str, key: bytes | None, value: bytes | None) -> tuple[int | None, int | None]:
    entity_id = int(key) if key is not None and 0 < len(key) <= 18 and key.isdigit() else None
    goods = topic.endswith(GOODS_TOPIC)
    raw: object = None
    if (entity_id is None or goods) and value is not None and len(value) <= KEPT_VALUE_BYTES:
        try:
            raw = orjson.loads(value)
        except ValueError:
            raw = None
    fields = raw if isinstance(raw, dict) else {}
    if entity_id is None:
        entity_id = _an_id(fields.get("aggregate_id"))
    if topic.endswith(ORDER_TOPIC):
        return entity_id, entity_id
    data = fields.get("data") if goods else None
    return entity_id, _an_id(data.get("order_id")) if isinstance(data, dict) else None


class DeadLetters:
    def __init__(self, producer: AIOKafkaProducer | None, delivery_timeout: float) -> None:
        """`producer` None: record only, send nothing (see HistoryConsumer's publish_dead_letters)."""
        self.producer = producer
        self.delivery_timeout = delivery_timeout
        # DLQ topics found missing, until when their records are parked without asking again.
        self._missing_until: dict[str, float] = {}

    async def record(
        self, conn: Connection, rejected: Sequence[tuple[ConsumerRecord, Rejected]], park_undelivered: bool = False
    ) -> Recorded:
        """Dead-letter or park each (message, verdict); call inside the transaction that advances the
        positions past these messages.

        A copy Kafka does not acknowledge within the delivery timeout raises DeliveryTimeout (the
        transaction is tried again), or with `park_undelivered` is parked.
        """
        parked: dict[int, str] = {}  # index in `rejected` -> why it is parked
        sent: dict[int, asyncio.Future[object]] = {}
        for i, (message, verdict) in enumerate(rejected):
            why = verdict.park or unsendable(message, verdict.reason)
            if why is None and self.producer is not None:
                why = await self._send(i, message, verdict, sent, park_undelivered)
            if why is not None:
                parked[i] = why
        for i, why in (await self._acknowledged(sent, park_undelivered)).items():
            parked[i] = why
        for i, (message, verdict) in enumerate(rejected):
            _log(message, verdict, parked.get(i), self.producer is not None)
        await conn.executemany(RECORD, [row(m, v, parked.get(i)) for i, (m, v) in enumerate(rejected)])
        return Recorded(dead_lettered=len(rejected) - len(parked), parked=len(parked))

    async def _send(
        self,
        i: int,
        message: ConsumerRecord,
        verdict: Rejected,
        sent: dict[int, asyncio.Future[object]],
        park_undelivered: bool,
    ) -> str | None:
        """Send the copy of `message` (its future into `sent[i]`); or why it is parked instead."""
        assert self.producer is not None
        topic = dlq_topic(message.topic)
        if self._missing_until.get(topic, 0.0) > time.monotonic():
            return f"the DLQ topic {topic} does not exist"
        try:
            sent[i] = await self.producer.send(
                topic, value=message.value, key=message.key, headers=dlq_headers(message, verdict.reason)
            )
        except MessageSizeTooLargeError as exc:
            return f"its copy is too large for the DLQ topic: {exc}"
        except UnknownTopicOrPartitionError:
            # Kafka says so also when it does not answer at all: an outage is waited out
            # as long as an unacknowledged copy would be, then the topic is taken as missing.
            if not park_undelivered:
                raise DeliveryTimeout(f"no metadata for the DLQ topic {topic}") from None
            self._missing_until[topic] = time.monotonic() + 4 * self.delivery_timeout
            return f"the DLQ topic {topic} does not exist"
        except KafkaTimeoutError as exc:  # the producer's buffer stayed full: Kafka does not take copies now
            if not park_undelivered:
                raise DeliveryTimeout(f"the dead-letter producer is not sending: {exc}") from None
            return f"Kafka did not take its copy on the DLQ topic: {exc}"
        except KafkaError as exc:
            return f"the DLQ topic {topic} refused its copy: {type(exc).__name__}: {exc}"
        return None

    async def _acknowledged(self, sent: dict[int, asyncio.Future[object]], park_undelivered: bool) -> dict[int, str]:
        """Wait for the copies' acknowledgements; the copies Kafka refused (or, with `park_undelivered`,
        did not acknowledge in time), with the reason to park them."""
        if not sent:
            return {}
        _, pending = await asyncio.wait(sent.values(), timeout=self.delivery_timeout)
        if pending and not park_undelivered:
            raise DeliveryTimeout(
                f"Kafka did not acknowledge {len(pending)} dead letters within {self.delivery_timeout:.0f}s"
            )
        out: dict[int, str] = {}
        for i, future in sent.items():
            if future in pending:
                out[i] = f"Kafka did not acknowledge its copy on the DLQ topic within {self.delivery_timeout:.0f}s"
            elif (error := future.exception()) is not None:
                out[i] = f"the DLQ topic refused its copy: {type(error).__name__}: {error}"
        return out


def _log(message: ConsumerRecord, verdict: Rejected, parked: str | None, publishing: bool) -> None:
    if parked is not None:
        level, said = logging.ERROR, "record parked: neither applied nor on the DLQ topic"
    elif publishing:
        level, said = logging.WARNING, "poison message sent to DLQ"
    else:
        level, said = logging.INFO, "poison message recorded"
    log.log(
        level,
        said,
        extra={
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "reason": verdict.reason,
            **({"parked_reason": parked} if parked is not None else {}),
            **identity(message.value),
        },
    )


def identity(value: bytes | None) -> dict[str, str]:
    """event_id and event_type of a poison message, when its value names them (it may not be JSON at all)."""
    if value is None or len(value) > KEPT_VALUE_BYTES:
        return {}
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: str(raw[k])[:100] for k in ("event_id", "event_type") if k in raw}
