"""Operator commands on the read model that need the consumers stopped: reset, reset-positions.

Each checks first that no consumer of the group is running (Kafka's group
membership): a running consumer would go on from the positions it holds and
skip, or re-apply, what the command changed under it.
"""

from __future__ import annotations

import logging
import sys
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from order_history.projection.positions import Positions
from order_history.settings import Settings
from shared.backoff import Backoff
from shared.events import TOPICS
from shared.kafka import KafkaRefused, client_options, start_client

log = logging.getLogger(__name__)


class OperationError(Exception):
    """A command that cannot be done now; the message says why and what to do."""


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


# Why a command could not check the group or read the logs (Kafka down, or refusing this client).
_CANNOT: tuple[type[Exception], ...] = (OperationError, KafkaRefused, KafkaError)


def _cannot(exc: Exception) -> int:
    return _fail(str(exc) if isinstance(exc, OperationError | KafkaRefused) else f"{type(exc).__name__}: {exc}")


async def group_members(settings: Settings) -> int:
    """How many consumers are in the group now (0 if the group is empty or unknown)."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=settings.kafka_request_timeout_ms)
    try:
        await start_client(admin, settings)
        # A group the broker has not seen yet may have no coordinator for a moment
        # (a new broker creates its offsets topic first): a retriable error.
        backoff = Backoff(0.2, 2.0)
        deadline = time.monotonic() + settings.kafka_request_timeout_ms / 1000
        while True:
            try:
                responses = await admin.describe_consumer_groups([settings.consumer_group])
                break
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise
                await backoff.wait()
    finally:
        await admin.close()
    members = 0
    for response in responses:
        for group in response.groups:
            members += len(group[5])  # (error_code, group_id, state, protocol_type, protocol, members, ...)
    return members


async def _require_stopped(settings: Settings) -> None:
    members = await group_members(settings)
    if members:
        raise OperationError(f"{members} consumer(s) of group {settings.consumer_group!r} are running; stop them first")


async def reset(settings: Settings) -> int:
    """Empty the read model and its positions: the consumers then rebuild it from the topics."""
    try:
        await _require_stopped(settings)
    except _CANNOT as exc:
        return _cannot(exc)
    conn = await asyncpg.connect(settings.owner_database_url)
    try:
        # The divergence sampler's state describes the model emptied here: its pass starts over.
        await conn.execute(
            "TRUNCATE orders, goods, consumer_positions, dead_letters, divergent_rows, divergence_sampler"
        )
    finally:
        await conn.close()
    print("read model emptied: the consumers rebuild it from the topics when started")
    return 0


async def log_bounds(settings: Settings, *topics: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(log start, log end) of every partition of `topics` (their Kafka names), through one client."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    try:
        await start_client(consumer, settings)
        tps: list[TopicPartition] = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                raise OperationError(f"topic {topic} does not exist")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        return await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def reset_positions(settings: Settings, topic: str, to: str, partitions: list[int] | None) -> int:
    if topic not in TOPICS:
        return _fail(f"unknown topic {topic!r}; one of {', '.join(TOPICS)}")
    try:
        await _require_stopped(settings)
        starts, ends = await log_bounds(settings, settings.kafka_topic_prefix + topic)
    except _CANNOT as exc:
        return _cannot(exc)
    chosen = starts if to == "start" else ends
    offsets = {tp: off for tp, off in chosen.items() if partitions is None or tp.partition in partitions}
    if not offsets:
        return _fail(f"{topic} has no partition {partitions}")
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await Positions(settings.consumer_group).set(conn, offsets)
    finally:
        await conn.close()
    for tp, offset in sorted(offsets.items()):
        print(f"{tp.topic}[{tp.partition}] -> {offset}")
    print(f"{len(offsets)} position(s) of group {settings.consumer_group!r} set to the log's {to}")
    return 0
