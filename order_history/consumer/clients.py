"""The consumer's clients: its Kafka consumer and dead-letter producer, its database pools.

`open` creates them, each as it goes (so that `close` closes what a failed
`open` had created), and `close` closes them within bounds, whatever the broker
and the database do; `open` may run again. Between the two, the consumer's
parts use them through one `Clients`; outside, every client is None.

Two pools: the lanes' (`pool`, one connection per lane), and one connection of
the consumer's own (`side`), so that a NOTIFY, and the caught-up marks, never
wait behind the lanes' transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener

from order_history.api.consistency import CHANNEL as APPLIED_CHANNEL
from order_history.projection.apply import Applier
from order_history.projection.dead_letters import DLQ_MAX_BYTES, DeadLetters
from order_history.projection.positions import Positions
from order_history.settings import Settings
from shared.database import create_pool
from shared.events import TOPICS
from shared.kafka import client_options, close_producer, start_producer
from shared.notify import Notifier

# The consumer's database sessions (bench.apply_sql uses them too).
SESSION_SETTINGS: Final = {
    "timezone": "UTC",
    "application_name": "order-history-consumer",
    # A part's transaction holds both its read-model changes and its positions,
    # so a commit lost in a database crash is lost whole and simply re-applied
    # from the older positions: waiting for the WAL flush buys nothing here (it
    # only slows every part down).
    "synchronous_commit": "off",
    # The batch statement reaches every row by primary key, whatever the sizes:
    # one generic plan serves every batch. A custom plan would also parse each
    # batch's array literals a second time, at planning (docs/benchmarks.md, third round).
    "plan_cache_mode": "force_generic_plan",
}


class Clients:
    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.side: asyncpg.Pool | None = None
        # Wakes the APIs' reads that wait for a Consistency-Token (order_history/api/consistency.py).
        self.applied: Notifier | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.applier: Applier | None = None

    async def open(
        self,
        s: Settings,
        instance: str,
        schema: str | None,
        publish_dead_letters: bool,
        positions: Positions,
        listener: ConsumerRebalanceListener,
    ) -> None:
        """Create the clients, subscribe to the event topics with `listener`, and join the group."""
        self.pool = await create_pool(
            s.database_url,
            s.apply_connections,
            min_size=1,
            command_timeout=60,
            acquire_timeout=60,
            session_settings={**SESSION_SETTINGS, **({"search_path": schema} if schema else {})},
            reset=True,
        )
        client_id = f"order-history-consumer-{instance}"
        self.producer = await start_producer(s, client_id=f"{client_id}-dlq", max_request_size=DLQ_MAX_BYTES)
        # A connection of its own: a NOTIFY, and the caught-up marks, must not wait behind the lanes'
        # transactions. The notifier owns it (and closes it).
        self.side = await create_pool(
            s.database_url,
            1,
            command_timeout=10,
            session_settings={**SESSION_SETTINGS, **({"search_path": schema} if schema else {})},
        )
        self.applied = Notifier(self.side, APPLIED_CHANNEL)
        self.applied.start()
        dead_letters = DeadLetters(self.producer if publish_dead_letters else None, s.dlq_delivery_timeout)
        self.applier = Applier(self.pool, positions, dead_letters)
        self.consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=s.consumer_group,
            client_id=client_id,
            enable_auto_commit=False,
            # Positions come from the read database; a fetch outside the log is an
            # error to stop on, never a reason to jump elsewhere (see assignment.py).
            auto_offset_reset="none",
            max_partition_fetch_bytes=s.partition_fetch_max_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(1000, s.session_timeout_ms // 3),
            max_poll_interval_ms=300000,
            request_timeout_ms=s.kafka_request_timeout_ms + s.session_timeout_ms,
        )
        self.consumer.subscribe([s.kafka_topic_prefix + t for t in TOPICS], listener=listener)
        async with asyncio.timeout(s.kafka_request_timeout_ms / 1000 + 10):
            await self.consumer.start()

    async def close(self) -> None:
        """Close the clients (bounded, whatever the broker and the database do); `open` may run again."""
        consumer, producer, pool, applied = self.consumer, self.producer, self.pool, self.applied
        self.consumer = self.producer = self.pool = self.applier = self.applied = self.side = None
        if applied is not None:
            await applied.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), timeout=10)
        if producer is not None:
            await close_producer(producer)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()
