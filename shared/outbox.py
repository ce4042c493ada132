"""Transactional outbox: the writer (inside a command's transaction) and the relay.

Delivery semantics: at least once. A row is marked published only after Kafka
acknowledged it (acks=all, idempotent producer); a crash between the ack and
the mark re-sends the row with the same event_id. Rows of one entity are sent in
the order they were committed (ascending outbox id; a command locks its entity
row, so a later change of one entity always gets a larger id), keyed by the
aggregate id, so they keep that order within their partition.
Only one relay per database publishes at a time (a transaction-level advisory
lock); others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.database import UNAVAILABLE_ERRORS
from shared.events import TOPIC_OF_TYPE, EventType, envelope_sql

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"
_DB_WAITED_OUT: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.exceptions.PostgresError)
_RELAY_LOCK_KEY = 0x6F7574626F78  # "outbox"


def insert_sql(
    event_type: EventType, rows: str, aggregate_id: str, aggregate_version: str, data: dict[str, str]
) -> str:
    """An `INSERT INTO outbox` of one event per row of `rows` (a CTE of the same statement).

    A command puts it in a `WITH` beside its own INSERT/UPDATE/DELETE ... RETURNING,
    so the entity and its event commit together in one statement and one round
    trip; PostgreSQL builds the envelope (`shared.events.envelope_sql`).
    """
    event_id = f"{rows}.outbox_event_id"
    envelope = envelope_sql(event_type, aggregate_id, aggregate_version, data, event_id=event_id)
    # The subquery draws one event id per row (a volatile function keeps it from being flattened).
    return (
        "INSERT INTO outbox (event_id, topic, message_key, payload) "
        f"SELECT {event_id}, '{TOPIC_OF_TYPE[event_type]}', ({aggregate_id})::text, {envelope} "
        f"FROM (SELECT gen_random_uuid() AS outbox_event_id, * FROM {rows}) AS {rows}"
    )


def with_event(write: str, event_type: EventType, aggregate_version: str, data: dict[str, str], columns: str) -> str:
    """One statement: `write` (an INSERT/UPDATE/DELETE ... RETURNING at least `columns`)
    as CTE `w`, the event of each row it wrote, and `columns` of those rows."""
    return (
        f"WITH w AS ({write}),\n"
        f"     e AS ({insert_sql(event_type, 'w', 'w.id', aggregate_version, data)})\n"
        f"SELECT {columns} FROM w"
    )


def delete_with_event(table: str, event_type: EventType, data: dict[str, str], columns: str) -> str:
    """One statement: delete row `id = $1` of `table` (compare-and-set on version when $2 is
    not NULL) with its event, which carries the row's last state one version on,
    `updated_at` being the deletion time; returns `columns` of the deleted row."""
    return with_event(
        f"""DELETE FROM {table} WHERE id = $1 AND ($2::integer IS NULL OR version = $2)
        RETURNING {columns}, now() AS deleted_at""",
        event_type,
        "w.version + 1",
        {**data, "updated_at": "w.deleted_at"},
        columns,
    )


class OutboxNotifier:
    """Wakes the relay after commits, outside the writing transactions.

    `poke()` after a command committed; a background task sends one
    `NOTIFY outbox` for all pokes since the last one, and at most one per
    `min_interval` seconds, so a burst of writes costs a few notifications (each
    one a round trip here and a wake-up of the relay), and no write transaction
    holds PostgreSQL's notify lock through its commit.
    """

    def __init__(self, pool: asyncpg.Pool, min_interval: float = 0.005) -> None:
        self._pool = pool
        self._min_interval = min_interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._pool.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            except Exception as exc:  # the relay's poll covers a lost wake-up
                log.debug("outbox notify failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(self._min_interval)


@dataclass
class RelayConfig:
    dsn: str
    bootstrap_servers: str
    batch_size: int = 1000
    poll_interval: float = 1.0
    retention_seconds: float = 24 * 3600.0
    purge_interval: float = 60.0
    max_backoff: float = 5.0
    request_timeout_ms: int = 10000
    topic_prefix: str = ""


class OutboxRelay:
    def __init__(self, config: RelayConfig, name: str) -> None:
        self.config = config
        self.name = name
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._kafka_ok: bool | None = None
        self._db_ok: bool | None = None
        self._last_purge = 0.0
        self._stopping = False
        self.published = 0

    # -- state-change logging: once per change, not per row --------------------
    def _set_kafka(self, ok: bool, detail: str = "") -> None:
        if ok != self._kafka_ok:
            if ok:
                log.info("kafka reachable, publishing", extra={"relay": self.name})
            else:
                log.warning("kafka unreachable, retrying with backoff", extra={"relay": self.name, "error": detail})
            self._kafka_ok = ok

    def _set_db(self, ok: bool, detail: str = "") -> None:
        if ok != self._db_ok:
            if ok:
                log.info("database reachable", extra={"relay": self.name})
            else:
                log.warning("database unreachable, retrying with backoff", extra={"relay": self.name, "error": detail})
            self._db_ok = ok

    # -- resources -------------------------------------------------------------
    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.config.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                request_timeout_ms=self.config.request_timeout_ms,
                client_id=f"outbox-relay-{self.name}",
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception:  # the broker is gone anyway
                pass

    async def _ensure_db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.config.dsn, min_size=1, max_size=2)
        if self._listener is None or self._listener.is_closed():
            self._listener = await asyncpg.connect(self.config.dsn)
            await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        assert self._pool is not None
        return self._pool

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def close(self) -> None:
        await self._drop_producer()
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        if self._pool is not None:
            await self._pool.close()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- the loop ------------------------------------------------------------
    async def publish_batch(self) -> int:
        """Publish up to batch_size unpublished rows; return how many (-1: not the leader)."""
        pool = await self._ensure_db()
        producer = await self._ensure_producer()
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK_KEY):
                return -1
            rows = await conn.fetch(
                "SELECT id, topic, message_key, payload FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
                self.config.batch_size,
            )
            if not rows:
                return 0
            futures = [
                await producer.send(
                    self.config.topic_prefix + r["topic"], value=r["payload"].encode(), key=r["message_key"].encode()
                )
                for r in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
                [r["id"] for r in rows],
            )
        self.published += len(rows)
        return len(rows)

    async def purge(self) -> int:
        pool = await self._ensure_db()
        result = await pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self.config.retention_seconds,
        )
        self._last_purge = time.monotonic()
        return int(result.split()[-1])

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                # Clear before reading: a NOTIFY that arrives while we publish wakes the next wait.
                self._wake.clear()
                count = await self.publish_batch()
                self._set_db(True)
                if count >= 0:
                    self._set_kafka(True)
                backoff = 0.1
                if time.monotonic() - self._last_purge > self.config.purge_interval:
                    await self.purge()
                if count == self.config.batch_size:
                    continue  # a backlog: drain without waiting
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_interval)
                except TimeoutError:
                    pass
            except (TimeoutError, KafkaError) as exc:
                self._set_kafka(False, f"{type(exc).__name__}: {exc}")
                await self._drop_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff)
            except _DB_WAITED_OUT as exc:  # down, no login, no permission...: wait, never drop
                self._set_db(False, f"{type(exc).__name__}: {exc}")
                if self._listener is not None and not self._listener.is_closed():
                    self._listener.terminate()
                self._listener = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff)
