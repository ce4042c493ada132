"""Test harness: real PostgreSQL and real Kafka started by devstack, per session.

Every test gets its own Kafka topic prefix (so topics never carry another test's
events) and freshly truncated databases.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from fastapi import FastAPI
from pydantic import SecretStr

from devstack.kafka import KafkaCluster
from devstack.paths import REPO
from devstack.processes import ManagedProcess
from devstack.stack import Stack
from goods.api import create_app as create_goods_app
from goods.settings import Settings as GoodsSettings
from order.api import create_app as create_order_app
from order.settings import Settings as OrderSettings
from order_history.api.app import create_app as create_history_app
from order_history.consumer.runner import HistoryConsumer
from order_history.settings import Settings as HistorySettings
from shared.command.outbox import UNPUBLISHED_SQL
from shared.command.relay import OutboxRelay
from shared.events import GOODS_TOPIC, ORDER_TOPIC, TOPICS, dlq_topic

_counter = itertools.count(1)
# Env.journal_outbox's trigger, function and table; also before creating them (a test that died may have left them).
_DROP_JOURNAL = """DROP TRIGGER IF EXISTS outbox_journal ON outbox; DROP FUNCTION IF EXISTS outbox_journal();
    DROP TABLE IF EXISTS outbox_journal;
"""


@dataclass
class Env:
    """One test's view of the shared servers."""

    stack: Stack
    prefix: str
    pools: dict[str, asyncpg.Pool] = field(default_factory=dict)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _consumer_runs: list[tuple[HistoryConsumer, asyncio.Task[None]]] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    _processes: list[ManagedProcess] = field(default_factory=list)

    # -- addresses -------------------------------------------------------------
    @property
    def kafka(self) -> KafkaCluster:
        return self.stack.kafka

    @property
    def bootstrap(self) -> str:
        return self.stack.kafka.bootstrap

    def url(self, service: str) -> str:
        env = self.stack.service_env()
        return {
            "order": env["ORDER_DATABASE_URL"],
            "goods": env["GOODS_DATABASE_URL"],
            "order_history": env["ORDER_HISTORY_DATABASE_URL"],
        }[service]

    def owner_url(self, service: str) -> str:
        """The database's owner role: schema changes and TRUNCATE (the service roles may do neither)."""
        env = self.stack.service_env()
        return {
            "order": env["ORDER_OWNER_DATABASE_URL"],
            "goods": env["GOODS_OWNER_DATABASE_URL"],
            "order_history": env["ORDER_HISTORY_OWNER_DATABASE_URL"],
        }[service]

    def topic(self, contract_topic: str) -> str:
        return self.prefix + contract_topic

    @property
    def group(self) -> str:
        return f"{self.prefix}order-history"

    def process_env(self) -> dict[str, str]:
        return {
            **self.stack.service_env(),
            "KAFKA_TOPIC_PREFIX": self.prefix,
            "ORDER_HISTORY_CONSUMER_GROUP": self.group,
            "ORDER_HISTORY_SESSION_TIMEOUT_MS": "6000",
            "LOG_LEVEL": "INFO",
        }

    # -- in-process services ---------------------------------------------------
    def order_settings(self) -> OrderSettings:
        return OrderSettings(
            database_url=self.url("order"),
            owner_database_url=self.owner_url("order"),
            kafka_bootstrap_servers=self.bootstrap,
        )

    def goods_settings(self) -> GoodsSettings:
        return GoodsSettings(
            database_url=self.url("goods"),
            owner_database_url=self.owner_url("goods"),
            kafka_bootstrap_servers=self.bootstrap,
        )

    def history_settings(self) -> HistorySettings:
        env = self.stack.service_env()
        return HistorySettings(
            database_url=self.url("order_history"),
            query_database_url=env["ORDER_HISTORY_QUERY_DATABASE_URL"],
            order_reader_database_url=env["ORDER_HISTORY_ORDER_READER_DATABASE_URL"],
            goods_reader_database_url=env["ORDER_HISTORY_GOODS_READER_DATABASE_URL"],
            owner_database_url=self.owner_url("order_history"),
            kafka_bootstrap_servers=self.bootstrap,
            cursor_key=SecretStr(env["ORDER_HISTORY_CURSOR_KEY"]),
        )

    @asynccontextmanager
    async def client(self, service: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client talking to the service's real ASGI app (real database); `settings` override."""
        async with self.app_client(service, **settings) as (_, client):
            yield client

    @asynccontextmanager
    async def app_client(self, service: str, **settings: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        """The service's real ASGI app, started, and an HTTP client talking to it."""
        app: FastAPI
        if service == "order":
            app = create_order_app(self.order_settings().model_copy(update=settings))
        elif service == "goods":
            app = create_goods_app(self.goods_settings().model_copy(update=settings))
        else:
            # This test's consumer group and topics: the API reads their positions for its freshness headers.
            own = {"consumer_group": self.group, "kafka_topic_prefix": self.prefix}
            app = create_history_app(self.history_settings().model_copy(update={**own, **settings}))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield app, client

    def start_relay(self, service: str, **overrides: Any) -> OutboxRelay:
        """An in-process relay; `overrides` are Settings fields (relay_batch_size=20, ...)."""
        base = self.order_settings() if service == "order" else self.goods_settings()
        settings = base.model_copy(update={"kafka_topic_prefix": self.prefix, "relay_poll_interval": 0.5, **overrides})
        relay = OutboxRelay(settings, name=service)
        self._tasks.append(asyncio.create_task(relay.run()))
        self._closers.append(relay.close)
        return relay

    async def start_consumer(self, **overrides: Any) -> HistoryConsumer:
        """An in-process consumer; `overrides` are Settings fields (batch_max_records=60, ...)."""
        settings = self.history_settings().model_copy(
            update={"consumer_group": self.group, "kafka_topic_prefix": self.prefix, **overrides}
        )
        consumer = HistoryConsumer(settings)
        await consumer.start()
        run = asyncio.create_task(consumer.run())
        self._tasks.append(run)
        self._consumer_runs.append((consumer, run))
        self._closers.append(consumer.stop)
        return consumer

    def check_consumers(self) -> None:
        """Raise if an in-process consumer's loop has ended before the test stopped it."""
        for consumer, run in self._consumer_runs:
            if run.done() and not run.cancelled() and not consumer.stopping:
                error = run.exception()
                raise AssertionError(f"a consumer's loop ended: {error!r}" if error else "a consumer's loop returned")

    # -- services as real processes ------------------------------------------
    def process(self, name: str, *args: str) -> ManagedProcess:
        """`python -m <args>` as a real background process, with this test's settings."""
        proc = ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", *args, f"--instance={self.prefix}{name}"],
            pid_file=self.stack.run_dir / f"{self.prefix}{name}.pid",
            log_file=self.stack.logs / f"{self.prefix}{name}.log",
            env=self.process_env(),
            cwd=REPO,
        )
        self._processes.append(proc)
        return proc

    async def close(self) -> None:
        for proc in self._processes:
            proc.stop(timeout=5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                pass
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:
                pass
        for pool in self.pools.values():
            await pool.close()

    async def as_owner(self, service: str, sql: str) -> None:
        """Run `sql` as the database's owner role (schema changes, TRUNCATE)."""
        conn = await asyncpg.connect(self.owner_url(service))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def journal_outbox(self, service: str) -> None:
        """From now until the test ends, copy every row written to the service's outbox into
        `outbox_journal`: what the tests compare Kafka with (the relay deletes what it published)."""
        await self.as_owner(
            service,
            _DROP_JOURNAL
            + """CREATE TABLE outbox_journal (LIKE outbox);
               CREATE FUNCTION outbox_journal() RETURNS trigger LANGUAGE plpgsql
                   SECURITY DEFINER SET search_path = public AS $$
               BEGIN
                   INSERT INTO outbox_journal SELECT * FROM new_rows;
                   RETURN NULL;
               END $$;
               CREATE TRIGGER outbox_journal AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
                   FOR EACH STATEMENT EXECUTE FUNCTION outbox_journal();""",
        )

        async def drop() -> None:
            await self.as_owner(service, _DROP_JOURNAL)

        self._closers.append(drop)

    async def close_pools(self) -> None:
        """Drop this test's pools at once (before the server goes away); `pool` makes new ones."""
        for pool in self.pools.values():
            pool.terminate()
        self.pools.clear()

    async def pool(self, service: str) -> asyncpg.Pool:
        if service not in self.pools:
            pool = await asyncpg.create_pool(
                self.url(service), min_size=1, max_size=4, server_settings={"timezone": "UTC"}
            )
            assert pool is not None
            self.pools[service] = pool
        return self.pools[service]

    # -- Kafka helpers ---------------------------------------------------------
    async def create_topics(self) -> None:
        names = [self.topic(t) for t in TOPICS] + [self.topic(dlq_topic(t)) for t in TOPICS]
        await self.kafka.ensure_topics(names)

    async def producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        self._closers.append(producer.stop)
        return producer

    async def read_topic(
        self, contract_topic: str, expect: int | None = None, timeout: float = 30.0
    ) -> list[ConsumerRecord]:
        """Every message of a topic from the beginning: its log end, or at least `expect` of them.

        Fewer than `expect` by the timeout fails: a test that waits for a count must not pass on
        what happened to arrive (nor spend the whole timeout on a count that cannot come)."""
        topic = self.topic(contract_topic)
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            out: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for msgs in batch.values():
                    out.extend(msgs)
                tps = consumer.assignment()
                if not tps:
                    continue
                if expect is not None:
                    if len(out) >= expect:
                        break
                    continue
                end = await consumer.end_offsets(list(tps))
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    break
            if expect is not None and len(out) < expect:
                raise AssertionError(f"{len(out)} of the {expect} records expected on {topic} within {timeout}s")
            return out
        finally:
            await consumer.stop()

    async def produce(self, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
        """Send (contract topic, key, value) messages in order, and wait for the acks."""
        producer = await self.producer()
        futures = [await producer.send(self.topic(t), key=k, value=v) for t, k, v in messages]
        await asyncio.gather(*futures)

    async def produce_with_java(
        self, contract_topic: str, records: Sequence[tuple[str, bytes | None, bytes | None]]
    ) -> None:
        """Send (codec, key, value) records with Apache Kafka's own Java producer, one producer per
        compression.type codec (none, gzip, snappy, lz4, zstd), in one JVM."""
        libs = self.kafka.nodes[0].libs_dir
        lines = "".join(
            " ".join([codec, *("-" if b is None else base64.b64encode(b).decode() for b in (key, value))]) + "\n"
            for codec, key, value in records
        )
        program = str(REPO / "tests" / "java" / "ProduceRecords.java")
        done = await asyncio.to_thread(
            subprocess.run,
            ["java", "-cp", f"{libs}/*", program, self.bootstrap, self.topic(contract_topic)],
            input=lines,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    async def end_offsets(self, contract_topics: tuple[str, ...] = TOPICS) -> dict[tuple[str, int], int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic(t), p) for t in contract_topics for p in range(self.kafka.partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            return {(tp.topic, tp.partition): off for tp, off in ends.items()}
        finally:
            await consumer.stop()

    async def positions(self) -> dict[tuple[str, int], int]:
        pool = await self.pool("order_history")
        rows = await pool.fetch(
            "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer_group = $1", self.group
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def wait_caught_up(self, timeout: float = 60.0) -> None:
        """Until the consumer's stored positions reach the end of both topics."""
        ends = await self.end_offsets()

        async def caught_up() -> bool:
            self.check_consumers()
            stored = await self.positions()
            return all(stored.get(tp, 0) >= end for tp, end in ends.items() if end > 0)

        await wait_until(caught_up, timeout, "the consumer to reach the end of the topics")

    async def start_pipeline(self) -> None:
        """Both outbox relays and a consumer: writes through the APIs reach the read model."""
        self.start_relay("order")
        self.start_relay("goods")
        await self.start_consumer()

    async def settle(self) -> None:
        """Until every accepted write is published and applied."""
        await self.wait_outbox_drained()
        await self.wait_caught_up()

    async def wait_outbox_drained(self, timeout: float = 60.0) -> None:
        async def drained() -> bool:
            for service in ("order", "goods"):
                pool = await self.pool(service)
                if await pool.fetchval(UNPUBLISHED_SQL):
                    return False
            return True

        await wait_until(drained, timeout, "the outbox relays to publish every row")

    @asynccontextmanager
    async def http(self, service: str) -> AsyncIterator[httpx.AsyncClient]:
        """A client of the service's real process on its port (see `process`)."""
        port = {
            "order": self.stack.config.order_port,
            "goods": self.stack.config.goods_port,
            "order_history": self.stack.config.history_port,
        }[service]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client


async def command(env: Env, *args: str, **overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` with the test's settings (`overrides`: more environment), to its end."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env={**env.process_env(), **overrides},
        cwd=REPO,
        timeout=120,
    )


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def truncate_all(env: Env) -> None:
    for service, tables in (
        ("order", "orders, outbox, version_floors"),
        ("goods", "goods, outbox, version_floors"),
        ("order_history", "orders, goods, consumer_positions, dead_letters, divergent_rows, divergence_sampler"),
    ):
        await env.as_owner(service, f"TRUNCATE {tables} RESTART IDENTITY")


@asynccontextmanager
async def fresh_env(stack: Stack) -> AsyncIterator[Env]:
    """One test's Env on `stack`: clean databases and topics of its own; closed after."""
    env = Env(stack=stack, prefix=new_prefix())
    await truncate_all(env)
    await env.create_topics()
    try:
        yield env
    finally:
        await env.close()


def new_prefix() -> str:
    return f"t{os.getpid()}-{next(_counter)}-"


ORDER = ORDER_TOPIC
GOODS = GOODS_TOPIC
