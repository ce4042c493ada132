"""The bench's own stack: PostgreSQL and Kafka on free ports, and service processes."""

from __future__ import annotations

import asyncio
import functools
import shutil
import sys
import time
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer

from devstack.config import StackConfig
from devstack.databases import DATABASES
from devstack.paths import REPO
from devstack.processes import ManagedProcess, free_port
from devstack.progress import say
from devstack.progress import step as devstack_step
from devstack.stack import Stack
from devstack.startup import readyz
from shared.events import TOPICS, dlq_topic

from .stats import children_of, median

log = functools.partial(say, prefix="bench")
step = functools.partial(devstack_step, prefix="bench")


def pg_settings_of(items: list[str]) -> dict[str, str]:
    """`--pg-set NAME=VALUE` options as a dict of PostgreSQL settings."""
    settings = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--pg-set {item!r}: expected NAME=VALUE")
        settings[name] = value
    return settings


def extra_env(spec: str) -> dict[str, str]:
    """`--set consumer_env=A=1,B=2` as a dict of environment variables; empty for ""."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise SystemExit(f"consumer_env {spec!r}: expected NAME=VALUE,NAME=VALUE")
    return {name.strip(): value.strip() for name, value in pairs}


@dataclass
class BenchStack:
    stack: Stack
    keep: bool = False
    pg_stats: bool = False
    processes: list[ManagedProcess] = field(default_factory=list)
    groups_ready: bool = False  # the broker has its offsets topic (see create_topics)

    @classmethod
    def create(
        cls, fast_pg: bool, keep: bool = False, pg_stats: bool = False, pg_settings: dict[str, str] | None = None
    ) -> BenchStack:
        pg_port = free_port()
        config = StackConfig(
            state_dir=REPO / ".devstack" / f"bench-{pg_port}",
            pg_port=pg_port,
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            order_port=free_port(),
            goods_port=free_port(),
            history_port=free_port(),
            fast_pg=fast_pg,
        )
        shutil.rmtree(config.state_dir, ignore_errors=True)
        stack = Stack(config)
        stack.postgres.extra_settings.update(pg_settings or {})
        if pg_stats:
            stack.postgres.extra_settings.update(
                {
                    "shared_preload_libraries": "pg_stat_statements,auto_explain",
                    "pg_stat_statements.track": "all",
                    # Plans of slow statements go to the PostgreSQL log (keep it with --keep).
                    "auto_explain.log_min_duration": "250ms",
                    "auto_explain.log_analyze": "on",
                    "auto_explain.log_buffers": "on",
                }
            )
        return cls(stack, keep=keep, pg_stats=pg_stats)

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    def start(self) -> None:
        with step(f"starting PostgreSQL and Kafka in {self.config.state_dir}"):
            self.stack.start_infrastructure()
            self.stack.migrate()
        if self.pg_stats:
            asyncio.run(self._create_pg_stat_statements())

    async def _create_pg_stat_statements(self) -> None:
        for name in ["postgres", *(db.name for db in DATABASES)]:
            conn = await asyncpg.connect(self.superuser_dsn(name))
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()

    async def reset_statement_stats(self) -> None:
        if not self.pg_stats:
            return
        conn = await asyncpg.connect(self.superuser_dsn("postgres"))
        try:
            await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()

    async def statement_stats(self, database: str, top: int = 10) -> list[list[object]]:
        """[statement, calls, total ms, mean ms, rows] of the costliest statements since the last reset."""
        if not self.pg_stats:
            return []
        conn = await asyncpg.connect(self.superuser_dsn(database))
        try:
            rows = await conn.fetch(
                """SELECT regexp_replace(query, '\\s+', ' ', 'g') AS query, calls,
                          total_exec_time, mean_exec_time, rows
                   FROM pg_stat_statements
                   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   ORDER BY total_exec_time DESC LIMIT $1""",
                top,
            )
        finally:
            await conn.close()
        return [
            [_shorten(r["query"]), r["calls"], round(r["total_exec_time"], 1), round(r["mean_exec_time"], 3), r["rows"]]
            for r in rows
        ]

    def down(self) -> None:
        self.stop_processes()
        try:
            self.stack.down()
        finally:
            if not self.keep:
                for _ in range(3):
                    shutil.rmtree(self.config.state_dir, ignore_errors=True)
                    if not self.config.state_dir.exists():
                        break
                    time.sleep(1.0)
                if self.stack.postgres.relocated_to is not None:
                    shutil.rmtree(self.stack.postgres.relocated_to, ignore_errors=True)

    # -- databases -------------------------------------------------------------
    def dsn(self, database: str) -> str:
        """`orders`, `goods` or `order_history`, as its owner role (the bench also changes the schema)."""
        db = next(d for d in DATABASES if d.name == database)
        return db.owner.url(db.name, self.config.pg_port)

    def superuser_dsn(self, database: str) -> str:
        return self.stack.postgres.dsn(database)

    async def checkpoint(self) -> None:
        """CHECKPOINT, so that a timed run starts from a clean state: no checkpoint of
        the previous run's writes during it, and WAL segments to recycle instead of
        new ones to create (a new 16 MB segment is zero-filled while commits wait)."""
        conn = await asyncpg.connect(self.superuser_dsn("postgres"))
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def machine_speed(self) -> dict[str, float]:
        """The same small fixed work, timed (median of 3, ms): a pure-Python loop and
        a PostgreSQL query that reads no table. Taken at a run's start and end, so
        that runs can be compared with how fast the machine was at the time (its
        speed drifts by ±15% and more)."""
        python_ms, postgres_ms = [], []
        conn = await asyncpg.connect(self.superuser_dsn("postgres"))
        try:
            for _ in range(3):
                started = time.perf_counter()
                total = 0
                for i in range(2_000_000):
                    total += i
                python_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await conn.fetchval("SELECT sum(g) FROM generate_series(1, 2000000) AS g")
                postgres_ms.append((time.perf_counter() - started) * 1000)
        finally:
            await conn.close()
        return {"python_loop_ms": round(median(python_ms), 1), "postgres_series_ms": round(median(postgres_ms), 1)}

    async def connect(self, database: str, **settings: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn(database), server_settings={"timezone": "UTC", **settings}, command_timeout=600
        )

    @staticmethod
    def tree_pids(proc: ManagedProcess) -> list[int]:
        """A service process and its direct children (an API's uvicorn workers)."""
        pid = proc.pid()
        return [] if pid is None else [pid, *children_of(pid)]

    def postgres_pids(self) -> list[int]:
        pid = self.stack.postgres.postmaster_pid()
        return [] if pid is None else [pid, *children_of(pid)]

    def kafka_pids(self) -> list[int]:
        return self.stack.kafka.pids()

    # -- Kafka -----------------------------------------------------------------
    async def create_topics(self, prefix: str, partitions: int | None = None) -> None:
        """A measurement's topics (`partitions` each, default the stack's); the first time, also the
        broker's offsets topic.

        A new broker creates `__consumer_offsets` when the first consumer group
        looks for its coordinator; until then that consumer is refused and
        retries (GroupCoordinatorNotAvailable). That is a one-time step of a new
        broker, not of the consumer, so a throwaway group joins once here, before
        any measurement starts a consumer.
        """
        names = [prefix + t for t in TOPICS] + [prefix + dlq_topic(t) for t in TOPICS]
        await self.stack.kafka.ensure_topics(names, partitions=partitions)
        if not self.groups_ready:
            with step("a consumer group joins once, so that the new broker has its offsets topic"):
                await self._join_once(names[0], f"{prefix}warm-up")
            self.groups_ready = True

    async def _join_once(self, topic: str, group: str) -> None:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.stack.kafka.bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + 60
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumer group {group} got no partitions of {topic} in 60 s")
                await consumer.getmany(timeout_ms=100, max_records=1)
        finally:
            await consumer.stop()

    # -- service processes -----------------------------------------------------
    def env(self, prefix: str, **extra: str) -> dict[str, str]:
        return {
            **self.stack.service_env(),
            "KAFKA_TOPIC_PREFIX": prefix,
            "ORDER_HISTORY_CONSUMER_GROUP": f"{prefix}order-history",
            "LOG_LEVEL": "INFO",
            **extra,
        }

    def process(self, name: str, argv: list[str], prefix: str, **extra_env: str) -> ManagedProcess:
        """A background `python -m ...` process with the stack's settings and this prefix."""
        proc = ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", *argv, f"--instance={prefix}{name}"],
            pid_file=self.stack.run_dir / f"{prefix}{name}.pid",
            log_file=self.stack.logs / f"{prefix}{name}.log",
            env=self.env(prefix, **extra_env),
            cwd=REPO,
        )
        self.processes.append(proc)
        return proc

    def service(self, name: str, prefix: str, **extra_env: str) -> ManagedProcess:
        """order-api, goods-api, order_history-api, order-relay, goods-relay, order_history-consumer."""
        module, command = name.rsplit("-", 1)
        return self.process(name, [module, command], prefix, **extra_env)

    def port_of(self, name: str) -> int:
        return self.stack.api_ports()[name]

    def stop_processes(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout=10)
        self.processes.clear()

    def wait_ready(self, names: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            port = self.port_of(name)
            while readyz(port) != 200:
                for p in self.processes:
                    if p.exited_early():
                        raise RuntimeError(f"{p.name} exited; last lines of {p.log_file}:\n{p.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f}s")
                time.sleep(0.1)


def _shorten(sql: str, width: int = 110) -> str:
    sql = sql.strip().replace("|", "\\|")
    return sql if len(sql) <= width else sql[: width - 1] + "…"


async def wait_for(predicate_sql: str, conn: asyncpg.Connection, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await conn.fetchval(predicate_sql):
            return True
        await asyncio.sleep(0.05)
    return False
