"""The projection's database side alone: the consumer's batch statements, without Kafka or Python's decoding.

`python -m bench.apply_sql [--events N] [--trials T] [--before SQL ...] [--pg-set NAME=VALUE ...]`

A diagnostic beside measurement 2 (not part of `make bench`). It builds the
projection bench's event stream (bench.projection.Generator), keys it to 3
partitions per topic as the bench's producer does, cuts it into batches of the
consumer's size and each batch into parts, its partitions split evenly over
the consumer's lanes (order_history.consumer.lanes.Lanes), and prepares every part's
parameters before the clock starts. Then, on an empty read model of a
PostgreSQL server of its own (durable settings, as the bench's), it applies
them with the consumer's statement and session settings:

- serial: every part one after another, on one connection: the database's own
  time per event;
- parallel: each batch's parts at once, one connection each. (The consumer's
  lanes do not wait for each other after each batch; this mode does.)

Each trial starts from an empty read model and a CHECKPOINT. `--before` runs SQL
on the empty read model first (to try an index or a storage parameter); after
each trial the read model is checked as measurement 2 checks it
(bench.projection.verify: the generator's state and a recount).

The stream's batches are consecutive slices of it, so every part holds about as
many events; the consumer's batches come as aiokafka hands them over, often
from two or three partitions, and its parts are less even.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from order_history.consumer.clients import SESSION_SETTINGS
from order_history.consumer.lanes import Lanes
from order_history.projection.statements import PreparedBatch, apply_prepared, prepare, reduce_events
from order_history.settings import Settings
from shared.events import Event

from .env import BenchStack, log, pg_settings_of, step
from .projection import Generator, verify

PARTITIONS = 3
Batches = list[list[tuple[int, PreparedBatch]]]  # per batch, its parts as (events, prepared parameters)


def batches_of(events: int, batch: int, ways: int) -> tuple[Generator, Batches]:
    """The generator (which knows the read model the stream must produce) and, per
    batch, its parts as (events, prepared parameters)."""
    gen = Generator()
    partitioner = DefaultPartitioner()
    partitions = list(range(PARTITIONS))
    out: Batches = []
    current: dict[TopicPartition, list[Event]] = {}
    # Each event's position as the consumer would read it (the rows record their source).
    sources: dict[TopicPartition, list[tuple[int, int]]] = {}
    offsets: dict[TopicPartition, int] = {}
    for i in range(events):
        event = gen.next(i)
        tp = TopicPartition(event.topic, partitioner(event.key, partitions, partitions))
        current.setdefault(tp, []).append(event)
        sources.setdefault(tp, []).append((tp.partition, offsets.get(tp, 0)))
        offsets[tp] = offsets.get(tp, 0) + 1
        if (i + 1) % batch == 0 or i + 1 == events:
            parts = []
            # each batch on its own: its partitions split evenly over the lanes
            for _, group in sorted(Lanes(ways).route({tp: len(m) for tp, m in current.items()}).items()):
                part = [e for tp in group for e in current[tp]]
                at = [s for tp in group for s in sources[tp]]
                parts.append((len(part), prepare(reduce_events(part, at), insert_created=True)))
            out.append(parts)
            current, sources = {}, {}
    return gen, out


async def trial(bs: BenchStack, gen: Generator, mode: str, batches: Batches, before: list[str]) -> dict[str, Any]:
    dsn = bs.superuser_dsn("order_history")
    ways = max(len(parts) for parts in batches)
    conns = [await asyncpg.connect(dsn, server_settings=SESSION_SETTINGS) for _ in range(ways)]
    try:
        await conns[0].execute("TRUNCATE orders, goods, consumer_positions, dead_letters")
        for sql in before:
            await conns[0].execute(sql)
        await conns[0].execute("CHECKPOINT")
        await conns[0].execute("SELECT pg_stat_reset()")
        await conns[0].execute("SELECT pg_stat_reset_shared('wal')")

        async def apply(conn: asyncpg.Connection, prepared: PreparedBatch) -> None:
            async with conn.transaction():
                await apply_prepared(conn, prepared)

        events = sum(n for parts in batches for n, _ in parts)
        started = time.perf_counter()
        for parts in batches:
            if mode == "serial":
                for _, prepared in parts:
                    await apply(conns[0], prepared)
            else:
                await asyncio.gather(*(apply(conns[k], prepared) for k, (_, prepared) in enumerate(parts)))
        seconds = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    checked = await verify(bs, gen)
    await asyncio.sleep(1.1)  # a backend flushes its table statistics as it exits
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname IN ('orders', 'goods')"
        )
        wal = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    finally:
        await conn.close()
    assert wal is not None
    updates = {r["relname"]: (r["n_tup_upd"], r["n_tup_hot_upd"]) for r in rows}
    return {
        "mode": mode,
        "events": events,
        "seconds": seconds,
        "us_per_event": seconds / events * 1e6,
        "events_per_s": events / seconds,
        "correct": checked["correct"],
        "updates_hot": updates,
        "wal_bytes_per_event": int(wal["wal_bytes"]) / events,
        "wal_fpi": wal["wal_fpi"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_sql", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument(
        "--batch", type=int, default=Settings.model_fields["batch_max_records"].default, help="events per batch"
    )
    parser.add_argument(
        "--parts", type=int, default=Settings.model_fields["apply_connections"].default, help="parts per batch"
    )
    parser.add_argument("--trials", type=int, default=2, help="trials of each mode, alternating")
    parser.add_argument("--before", action="append", default=[], metavar="SQL", help="run on the empty read model")
    parser.add_argument("--pg-set", action="append", default=[], metavar="NAME=VALUE", help="a PostgreSQL setting")
    args = parser.parse_args(argv)
    with step(f"building and preparing {args.events:,} events"):
        gen, batches = batches_of(args.events, args.batch, args.parts)
    pg_settings = pg_settings_of(args.pg_set)
    bs = BenchStack.create(fast_pg=False, pg_settings=pg_settings)
    results = []
    try:
        with step(f"starting PostgreSQL in {bs.config.state_dir}"):
            bs.stack.postgres.start()
            bs.stack.postgres.create_databases()
            bs.stack.migrate()
        for n in range(args.trials):
            for mode in ("serial", "parallel"):
                with step(f"{mode} trial {n + 1}"):
                    results.append(asyncio.run(trial(bs, gen, mode, batches, args.before)))
    finally:
        bs.down()
    before = "; ".join(args.before) or "-"
    settings = ", ".join(args.pg_set) or "-"
    print(f"\n{args.events:,} events, batches of {args.batch:,}, {args.parts} parts each; before: {before}")
    print(f"PostgreSQL settings: {settings}\n")
    columns = [
        "mode",
        "µs per event",
        "events/s",
        "read model correct",
        "updates, HOT (orders; goods)",
        "WAL bytes per event; full-page images",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in results:
        counts = (r["updates_hot"].get(t, (0, 0)) for t in ("orders", "goods"))
        hot = "; ".join(f"{upd:,}, {hot:,}" for upd, hot in counts)
        wal = f"{r['wal_bytes_per_event']:,.0f}; {r['wal_fpi']:,}"
        cells = [r["mode"], f"{r['us_per_event']:.2f}", f"{r['events_per_s']:,.0f}", r["correct"], hot, wal]
        print("| " + " | ".join(map(str, cells)) + " |")
    failed = [r for r in results if not r["correct"]]
    if failed:
        log(f"{len(failed)} trial(s) left a read model that differs from the generator's state")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
