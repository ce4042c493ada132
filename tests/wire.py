"""Records as any Kafka producer can write them, for the wire tests and the wire fuzzer.

Kafka's Java client writes header keys as UTF-8 text, but the protocol carries
them as bytes and the broker takes any: librdkafka and others send whatever the
application gives them. aiokafka's producer only takes text, so `raw_header_keys`
lets a test producer write a key's bytes as they are (through aiokafka's own
pure-Python batch builder, which encodes keys by calling `encode`). Likewise
`send_any` sends a record with neither key nor value, which aiokafka refuses
and Kafka takes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiokafka.producer.message_accumulator as accumulator
import aiokafka.producer.producer as producer_module
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import RecordMetadata


class RawKey(str):
    """A header key whose encoded form is `raw` (any bytes, valid UTF-8 or not)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawKey:
        key = super().__new__(cls, raw.decode("utf-8", "replace"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@contextmanager
def raw_header_keys() -> Iterator[None]:
    """While inside, aiokafka producers of this process build batches in Python, where a RawKey works."""
    saved = accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder
    accumulator.DefaultRecordBatchBuilder = producer_module.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    try:
        yield
    finally:
        accumulator.DefaultRecordBatchBuilder, producer_module.DefaultRecordBatchBuilder = saved


async def send_any(
    producer: AIOKafkaProducer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    timestamp_ms: int | None = None,
) -> asyncio.Future[RecordMetadata]:
    """`producer.send`, also for a record with neither key nor value (aiokafka refuses to send one;
    Kafka's protocol and broker take it, and other clients send it)."""
    if key is not None or value is not None:
        sent: asyncio.Future[RecordMetadata] = await producer.send(
            topic, value, key=key, headers=headers, timestamp_ms=timestamp_ms
        )
        return sent
    partitions = sorted(await producer.partitions_for(topic))
    tp = TopicPartition(topic, random.choice(partitions))
    accumulator_: Any = producer._message_accumulator
    future: asyncio.Future[RecordMetadata] = await accumulator_.add_message(
        tp, None, None, 30.0, timestamp_ms=timestamp_ms, headers=headers
    )
    return future
