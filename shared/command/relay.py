"""The outbox relay: publishes committed outbox rows to Kafka.

Delivery semantics: at least once, in commit order per entity. A row is
deleted only after Kafka acknowledged it (acks=all, idempotent producer); a
crash between the acknowledgement and the delete sends the row again, with the
same event_id. The outbox thus holds only what is not yet published. Rows go
out in ascending outbox id, keyed by the aggregate id; a command locks its
entity's row, so a later change of one entity always has a larger id and lands
after the earlier one in the entity's partition.

No database transaction is open while Kafka is waited for: a batch is read,
sent, and deleted in a short transaction of its own once every message is
acknowledged. A batch Kafka does not acknowledge within
`relay_delivery_timeout` is given up (it stays in the outbox) and sent again
later.

Leadership: one relay per database publishes; any others stand by. The leader
holds a session-level advisory lock on a connection of its own, which also
LISTENs for the APIs' NOTIFY; a standby tries the lock at every poll. The
leader gives the lock up when Kafka fails it, so a standby (perhaps with a
better path to Kafka) can take over, and PostgreSQL ends a leader's session
that stays silent longer than `relay_leader_lease` (a hung or stopped process),
which releases the lock too. Two relays may then briefly send the same rows:
duplicates, never a reordering of one entity's first deliveries, since each
sends in id order.

`run()` waits out database and Kafka outages and returns only when stopped;
any other error ends it, and the process then exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from prometheus_client import Counter, Gauge, Histogram

from shared import logs
from shared.backoff import Backoff
from shared.command.outbox import NOTIFY_CHANNEL
from shared.database import WAIT_OUT_ERRORS
from shared.kafka import DeliveryTimeout, close_producer, deliver, start_producer
from shared.settings import CommandServiceSettings

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x6F7574626F78  # "outbox"
_COMMAND_TIMEOUT = 30.0
_SELECT = "SELECT id, topic, message_key, payload FROM outbox ORDER BY id LIMIT $1"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"

# The relay's metrics (served by `shared.metrics.serve`); `relay` is the service: order or goods.
PUBLISHED = Counter("relay_events_published_total", "Outbox events published to Kafka", ["relay"])
PUBLISH_ERRORS = Counter(
    "relay_publish_errors_total", "Relay cycles that failed: Kafka or the database unreachable or too slow", ["relay"]
)
BATCH_SECONDS = Histogram(
    "relay_batch_seconds",
    "Time from reading a batch to Kafka's acknowledgement of all of it",
    ["relay"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
)
LEADER = Gauge("relay_leader", "1 while this relay instance leads (publishes), 0 while it stands by", ["relay"])


class OutboxRelay:
    def __init__(self, settings: CommandServiceSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._lead: asyncpg.Connection | None = None  # leader lock + LISTEN
        self._work: asyncpg.Connection | None = None  # reads and deletes batches
        self.leading = False
        self._standing_by = False
        self._kafka_ok: bool | None = None
        self._db_ok: bool | None = None
        self.published = 0
        LEADER.labels(name).set_function(lambda: 1.0 if self.leading else 0.0)
        PUBLISHED.labels(name)  # shown as 0 until the first publish, not absent
        PUBLISH_ERRORS.labels(name)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(0.1, self.settings.relay_max_backoff, stop=self._stop)
        while not self._stop.is_set():
            try:
                await self._cycle()
                backoff.reset()
            except KafkaError as exc:
                PUBLISH_ERRORS.labels(self.name).inc()
                self._set_kafka(False, exc)
                await self._resign()
                await self._drop_producer()
                await backoff.wait()
            except WAIT_OUT_ERRORS as exc:  # down, restarting, no login, no permission...: wait, never drop
                PUBLISH_ERRORS.labels(self.name).inc()
                self._set_db(False, exc)
                self._drop_connections()
                if not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError):
                    await self._drop_producer()  # a socket error: maybe Kafka's, start both afresh
                await backoff.wait()

    async def _cycle(self) -> None:
        """One step: become or stay leader, publish one batch, wait when idle."""
        lead, work = await self._connect()
        if not await self._lead_or_stand_by(lead):
            await self._wait(self.settings.relay_poll_interval)
            return
        self._set_db(True)
        # Kafka as soon as it leads, not at its first row: a refused login stops it at its start.
        await self._ensure_producer()
        # Cleared before reading: a NOTIFY that arrives while we publish wakes the next wait.
        self._wake.clear()
        count = await self._publish_batch(work)
        if count < self.settings.relay_batch_size:
            await self._wait(self.settings.relay_poll_interval)

    async def _lead_or_stand_by(self, lead: asyncpg.Connection) -> bool:
        if self.leading:
            # The lock is ours for as long as this session lives; a query proves it still does.
            await lead.fetchval("SELECT 1", timeout=_COMMAND_TIMEOUT)
            return True
        self.leading = bool(await lead.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY))
        if self.leading:
            log.info("leading: this relay publishes", extra={"relay": self.name})
        elif not self._standing_by:
            log.info("standing by: another relay leads", extra={"relay": self.name})
        self._standing_by = not self.leading
        return self.leading

    async def _publish_batch(self, work: asyncpg.Connection) -> int:
        rows = await work.fetch(_SELECT, self.settings.relay_batch_size, timeout=_COMMAND_TIMEOUT)
        if not rows:
            return 0
        read = time.monotonic()
        producer = await self._ensure_producer()
        prefix = self.settings.kafka_topic_prefix
        started = time.monotonic()
        timeout = self.settings.relay_delivery_timeout
        try:
            # Inside the deadline too: send() itself waits while the producer's buffer for a
            # partition is full (up to aiokafka's request timeout), and a leader waiting that
            # long, idle on its lease connection, loses the lease without giving the batch up.
            async with asyncio.timeout(timeout):
                futures = [
                    await producer.send(prefix + r["topic"], value=r["payload"].encode(), key=r["message_key"].encode())
                    for r in rows
                ]
        except TimeoutError:
            raise DeliveryTimeout(f"Kafka took no more of {len(rows)} messages within {timeout:.0f}s") from None
        sent = await deliver(futures, timeout - (time.monotonic() - started))
        self._set_kafka(True)
        async with work.transaction():
            await work.execute(_DELETE, [r["id"] for r in rows], timeout=_COMMAND_TIMEOUT)
        self.published += len(rows)
        PUBLISHED.labels(self.name).inc(len(rows))
        BATCH_SECONDS.labels(self.name).observe(time.monotonic() - read)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch published",
                extra={
                    "relay": self.name,
                    "events": len(rows),
                    "outbox_ids": f"{rows[0]['id']}-{rows[-1]['id']}",
                    **logs.offset_ranges(_ranges(sent)),
                },
            )
        return len(rows)

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # -- resources -------------------------------------------------------------
    async def _connect(self) -> tuple[asyncpg.Connection, asyncpg.Connection]:
        if self._lead is None or self._lead.is_closed():
            self.leading = False
            self._lead = await self._open({"idle_session_timeout": _ms(self.settings.relay_leader_lease)})
            await self._lead.add_listener(NOTIFY_CHANNEL, self._on_notify)
        if self._work is None or self._work.is_closed():
            lease = _ms(self.settings.relay_leader_lease)
            self._work = await self._open({"idle_in_transaction_session_timeout": lease})
        return self._lead, self._work

    async def _open(self, settings: dict[str, str]) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.settings.database_url,
            timeout=10,
            command_timeout=_COMMAND_TIMEOUT,
            server_settings={"application_name": f"outbox-relay-{self.name}", **settings},
        )

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await start_producer(self.settings, client_id=f"outbox-relay-{self.name}")
            self._set_kafka(True)
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_producer(producer)

    async def _resign(self) -> None:
        """Give the leader lock up (Kafka failed this relay): a standby may take over."""
        if not self.leading:
            return
        self.leading = False
        lead = self._lead
        if lead is not None and not lead.is_closed():
            try:
                await lead.fetchval("SELECT pg_advisory_unlock($1)", LEADER_LOCK_KEY, timeout=5)
            except Exception:  # the session is broken: ending it releases the lock as well
                lead.terminate()
        log.info("standing down: another relay may lead", extra={"relay": self.name})

    def _drop_connections(self) -> None:
        self.leading = False
        for conn in (self._lead, self._work):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self._lead = self._work = None

    async def close(self) -> None:
        await self._drop_producer()
        for conn in (self._lead, self._work):
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), timeout=2)
                except Exception:
                    conn.terminate()
        self._lead = self._work = None

    # -- state-change logging: once per change, not per row --------------------
    def _set_kafka(self, ok: bool, error: BaseException | None = None) -> None:
        if ok != self._kafka_ok:
            if ok:
                log.info("kafka reachable, publishing", extra={"relay": self.name})
            else:
                log.warning(
                    "kafka unreachable or too slow, batch given up; retrying with backoff",
                    extra={"relay": self.name, "error": _describe(error)},
                )
            self._kafka_ok = ok

    def _set_db(self, ok: bool, error: BaseException | None = None) -> None:
        if ok != self._db_ok:
            if ok:
                log.info("database reachable", extra={"relay": self.name})
            else:
                log.warning(
                    "database unreachable, retrying with backoff", extra={"relay": self.name, "error": _describe(error)}
                )
            self._db_ok = ok


def _ranges(sent: list[RecordMetadata]) -> list[tuple[str, int, int, int]]:
    """(topic, partition, first offset, last offset) of what one batch wrote."""
    spans: dict[tuple[str, int], tuple[int, int]] = {}
    for m in sent:
        first, last = spans.get((m.topic, m.partition), (m.offset, m.offset))
        spans[(m.topic, m.partition)] = (min(first, m.offset), max(last, m.offset))
    return [(topic, partition, first, last) for (topic, partition), (first, last) in spans.items()]


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def _describe(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"
