"""`order-history rebuild`: a new read model from the topics, built beside the serving one, then swapped in.

1. Refuse if any partition's log no longer starts at offset 0: retention
   deleted events, and a model built from what is left would be partial.
2. Create the schema `read_model_next` (dropping a failed attempt's), apply the
   migrations there, give it the grants of `public`.
3. Run a consumer of the same code into it: its own consumer group
   (`<group>.rebuild`) and positions, from the beginning of every partition,
   recording dead letters without sending them again. The current model keeps
   serving and its consumers keep applying; progress shows events, events/s,
   lag and the time left.
4. Once the lag is at most `switch_lag`, switch, in one transaction of the
   owner role: lock the serving consumers' position rows (their transactions
   wait), let the rebuild catch up to at least those positions, stop it, give
   the serving group the rebuild's positions in the new schema, mark the old
   ones RETIRED, and rename `public` to `read_model_retired` and
   `read_model_next` to `public`. At the commit the APIs' next statements read
   the new tables (PostgreSQL replans statements when a schema they name
   changes) and the consumers' waiting transactions apply nothing to the old
   ones: they find their positions retired and re-read them from the new model
   (positions.PositionsRetired), which holds at least what the old one did. No
   event is lost; one the rebuild applied beyond the old positions is applied
   again only as a duplicate the version guards ignore.
5. Drop the old schema (unless `keep_old`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from order_history.consumer.runner import HistoryConsumer
from order_history.ops.operations import OperationError, log_bounds
from order_history.projection.positions import RETIRED
from order_history.settings import Settings
from shared import progress
from shared.database import WAIT_OUT_ERRORS
from shared.events import TOPICS
from shared.kafka import KafkaRefused
from shared.migrations import migrate

NEXT: Final = "read_model_next"
RETIRED_SCHEMA: Final = "read_model_retired"
_SERVING: Final = "public"
_POSITIONS = "SELECT topic, partition, next_offset FROM {schema}.consumer_positions WHERE consumer_group = $1"
_LOCK_POSITIONS = _POSITIONS + " ORDER BY topic, partition FOR UPDATE"


class RebuildError(Exception):
    """The rebuild cannot go on; the message says why (the serving model is untouched)."""


@dataclass
class Outcome:
    events: int
    seconds: float
    lag_at_switch: int
    dropped_old: bool


def _offsets(rows: list[asyncpg.Record]) -> dict[TopicPartition, int]:
    return {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}


async def _log_ends(settings: Settings) -> dict[TopicPartition, int]:
    """Every partition's log end; RebuildError if any log no longer starts at 0."""
    starts, ends = await log_bounds(settings, *(settings.kafka_topic_prefix + topic for topic in TOPICS))
    for tp, start in sorted(starts.items()):
        if start > 0:
            raise RebuildError(
                f"{tp.topic}[{tp.partition}] starts at offset {start}: retention deleted events, and a read "
                "model rebuilt from the topics would miss them (nothing was changed)"
            )
    return ends


async def _copy_grants(conn: asyncpg.Connection[asyncpg.Record], source: str, target: str) -> None:
    """Give `target` and its tables the grants (and default privileges) `source` and its tables have."""
    statements: list[str] = []
    schema_acl = await conn.fetch(
        """SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END AS grantee,
                  a.privilege_type
           FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = $1 AND a.grantee <> n.nspowner""",
        source,
    )
    statements += [f"GRANT {r['privilege_type']} ON SCHEMA {target} TO {r['grantee']}" for r in schema_acl]
    table_acl = await conn.fetch(
        """SELECT c.relname, c.relkind::text AS relkind,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END AS grantee,
                  a.privilege_type
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
           WHERE n.nspname = $1 AND c.relkind IN ('r', 'S', 'v') AND a.grantee <> c.relowner""",
        source,
    )
    statements += [
        f"GRANT {r['privilege_type']} ON {'SEQUENCE' if r['relkind'] == 'S' else 'TABLE'} "
        f"{target}.{r['relname']} TO {r['grantee']}"
        for r in table_acl
    ]
    defaults = await conn.fetch(
        """SELECT quote_ident(d.defaclrole::regrole::text) AS owner, d.defaclobjtype::text AS kind,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END AS grantee,
                  a.privilege_type
           FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
           WHERE n.nspname = $1 AND d.defaclobjtype IN ('r', 'S')""",
        source,
    )
    statements += [
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {r['owner']} IN SCHEMA {target} GRANT {r['privilege_type']} ON "
        f"{'SEQUENCES' if r['kind'] == 'S' else 'TABLES'} TO {r['grantee']}"
        for r in defaults
    ]
    for statement in statements:
        await conn.execute(statement)


class Rebuild:
    """The steps of a rebuild, for the command and for tests that act between them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = f"{settings.consumer_group}.rebuild"
        self.consumer: HistoryConsumer | None = None
        self.task: asyncio.Task[None] | None = None
        self.log_ends: dict[TopicPartition, int] = {}
        self.started = time.monotonic()

    async def _owner(self) -> asyncpg.Connection[asyncpg.Record]:
        return await asyncpg.connect(self.settings.owner_database_url, timeout=10)

    async def prepare(self) -> None:
        """Check the logs, create the new schema and its tables, start its consumer."""
        self.log_ends = await _log_ends(self.settings)
        conn = await self._owner()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {NEXT} CASCADE")
            if await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", RETIRED_SCHEMA):
                raise RebuildError(f"schema {RETIRED_SCHEMA} exists (a rebuild kept it): drop it first")
            await conn.execute(f"CREATE SCHEMA {NEXT}")
            await migrate(self.settings.owner_database_url, "order_history", schema=NEXT)
            await _copy_grants(conn, _SERVING, NEXT)
        finally:
            await conn.close()
        self.consumer = HistoryConsumer(
            self.settings.model_copy(update={"consumer_group": self.group}),
            instance="rebuild",
            schema=NEXT,
            publish_dead_letters=False,
        )
        await self.consumer.start()
        self.task = asyncio.create_task(self.consumer.run())

    async def positions(self, conn: asyncpg.Connection[asyncpg.Record]) -> dict[TopicPartition, int]:
        return _offsets(await conn.fetch(_POSITIONS.format(schema=NEXT), self.group))

    def _check_running(self) -> None:
        assert self.consumer is not None and self.task is not None
        if self.consumer.halted:
            raise RebuildError("; ".join(m.reason for m in self.consumer.halted))
        if self.task.done():
            error = self.task.exception()
            raise RebuildError(f"the rebuild's consumer stopped: {error!r}")

    async def catch_up(self, switch_lag: int) -> int:
        """Until the rebuild is within `switch_lag` events of the logs' ends (read again every few
        seconds); returns the lag then."""
        conn = await self._owner()
        bar = progress.bar("rebuild", total=sum(self.log_ends.values()), unit="event")
        last_ends = time.monotonic()
        try:
            while True:
                self._check_running()
                if time.monotonic() - last_ends > 5:
                    with contextlib.suppress(KafkaError, OperationError):
                        self.log_ends = await _log_ends(self.settings)
                    last_ends = time.monotonic()
                    bar.total = sum(self.log_ends.values())
                applied = await self.positions(conn)
                lag = sum(max(0, end - applied.get(tp, 0)) for tp, end in self.log_ends.items())
                bar.update(sum(applied.values()) - bar.n)
                bar.set_postfix(lag=lag)
                if lag <= switch_lag:
                    return lag
                await asyncio.sleep(0.5)
        finally:
            bar.close()
            await conn.close()

    async def switch(
        self, catch_up_timeout: float = 60.0, after_lock: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Swap the new model in (see the module docstring, step 4); the old one is left as RETIRED_SCHEMA.

        `after_lock`: awaited once the serving positions are locked (a test makes a serving
        consumer's transaction wait there)."""
        assert self.consumer is not None and self.task is not None
        # A serving position past its log's end (the topic was recreated: the serving
        # consumer is halted) cannot be reached; the log's end is what there is.
        ends = await _log_ends(self.settings)
        conn = await self._owner()
        watcher = await self._owner()
        try:
            async with conn.transaction():
                locked = await conn.fetch(_LOCK_POSITIONS.format(schema=_SERVING), self.settings.consumer_group)
                serving = {tp: min(offset, ends.get(tp, offset)) for tp, offset in _offsets(locked).items()}
                if after_lock is not None:
                    await after_lock()
                deadline = time.monotonic() + catch_up_timeout
                while _behind(await self.positions(watcher), serving):
                    self._check_running()
                    if time.monotonic() > deadline:
                        reached = await self.positions(watcher)
                        short = ", ".join(
                            f"{tp.topic}[{tp.partition}] at {reached.get(tp, 0)} of {offset}"
                            for tp, offset in sorted(serving.items())
                            if reached.get(tp, 0) < offset
                        )
                        raise RebuildError(
                            f"the rebuild did not reach the serving positions in {catch_up_timeout}s: {short}"
                        )
                    await asyncio.sleep(0.05)
                self.consumer.request_stop()
                await asyncio.wait_for(self.task, timeout=catch_up_timeout)
                rebuilt = await self.positions(watcher)
                behind = _behind(rebuilt, serving)
                if behind:
                    raise RebuildError(f"the rebuild stopped behind the serving positions: {', '.join(behind)}")
                await _hand_over(conn, self.settings.consumer_group, self.group, rebuilt)
                await conn.execute(f"ALTER SCHEMA {_SERVING} RENAME TO {RETIRED_SCHEMA}")
                await conn.execute(f"ALTER SCHEMA {NEXT} RENAME TO {_SERVING}")
        finally:
            await watcher.close()
            await conn.close()
            await self.consumer.close()

    async def drop_old(self) -> None:
        conn = await self._owner()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE")
        finally:
            await conn.close()

    async def abandon(self) -> None:
        """After a failure: stop the consumer and drop the new schema (the serving model is untouched)."""
        if self.consumer is not None:
            await self.consumer.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        conn = await self._owner()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {NEXT} CASCADE")
        finally:
            await conn.close()


def _behind(rebuilt: Mapping[TopicPartition, int], serving: Mapping[TopicPartition, int]) -> list[str]:
    """The partitions where the rebuild has not reached the serving positions."""
    return [f"{tp.topic}[{tp.partition}]" for tp, offset in sorted(serving.items()) if rebuilt.get(tp, 0) < offset]


async def _hand_over(
    conn: asyncpg.Connection[asyncpg.Record],
    serving_group: str,
    rebuild_group: str,
    rebuilt: Mapping[TopicPartition, int],
) -> None:
    """The serving group takes the rebuild's positions in the new schema, with what they say of its
    freshness (docs/freshness.md); its old ones are retired."""
    ordered = sorted(rebuilt)
    await conn.execute(
        f"""INSERT INTO {NEXT}.consumer_positions
                (consumer_group, topic, partition, next_offset, newest_occurred_at, caught_up_at)
            SELECT $1, x.t, x.p, x.o, r.newest_occurred_at, r.caught_up_at
            FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS x(t, p, o)
            LEFT JOIN {NEXT}.consumer_positions AS r ON r.consumer_group = $5 AND r.topic = x.t AND r.partition = x.p
            ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
                newest_occurred_at = EXCLUDED.newest_occurred_at, caught_up_at = EXCLUDED.caught_up_at""",
        serving_group,
        [tp.topic for tp in ordered],
        [tp.partition for tp in ordered],
        [rebuilt[tp] for tp in ordered],
        rebuild_group,
    )
    await conn.execute(f"DELETE FROM {NEXT}.consumer_positions WHERE consumer_group = $1", rebuild_group)
    await conn.execute(
        f"UPDATE {_SERVING}.consumer_positions SET next_offset = $2, updated_at = now() WHERE consumer_group = $1",
        serving_group,
        RETIRED,
    )


_FAILURES: tuple[type[Exception], ...] = (
    *WAIT_OUT_ERRORS,
    KafkaError,
    KafkaRefused,
    RebuildError,
    OperationError,
    TimeoutError,
)


async def run(settings: Settings, switch_lag: int, keep_old: bool) -> int:
    """The console command: the summary line, or a clear error and exit status 1."""
    rebuild = Rebuild(settings)
    try:
        await rebuild.prepare()
        lag = await rebuild.catch_up(switch_lag)
        await rebuild.switch()
    except _FAILURES as exc:
        with contextlib.suppress(*_FAILURES):
            await rebuild.abandon()
        print(f"error: rebuild failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not keep_old:
        await rebuild.drop_old()
    seconds = time.monotonic() - rebuild.started
    events = sum(rebuild.log_ends.values())
    kept = f"; the old read model is kept as schema {RETIRED_SCHEMA}" if keep_old else "; the old read model dropped"
    print(
        f"rebuilt the read model from {events} event(s) in {seconds:.1f} s ({events / max(seconds, 1e-9):.0f} "
        f"events/s), switch started at a lag of {lag} event(s){kept}"
    )
    return 0
