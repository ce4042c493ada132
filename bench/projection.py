"""2. Projection throughput: the order-history consumer from a cold start, vs a raw read and a naive consumer.

A consistent stream of mixed events (creates, updates, moves, deletes of orders
and goods; per-entity increasing versions; some goods naming an order before
the order's own event) is built with shared.events.new_event, produced by an
idempotent aiokafka producer into topics of their own prefix, and then read by:

- the real consumer (`python -m order_history consumer`) from an empty read
  model: time from process start until consumer_positions reach the end offsets;
- `bench.workers raw`: an aiokafka consumer that only reads and parses (the ceiling);
- `bench.workers naive`: one event per transaction, for a bounded time.

After each real-consumer trial the read model is compared with the state the
generator says is right.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from devstack.paths import REPO
from shared.events import (
    Event,
    GoodsData,
    GoodsDeletedData,
    OrderData,
    OrderDeletedData,
    new_event,
)

from .config import Scale
from .env import BenchStack, extra_env, log, step
from .profile import Profiler
from .report import Report, Section, fmt
from .stats import CpuMeter, median, proc_mib, ratio

BASE_TIME = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# Share of each kind of change in the stream.
MIX: dict[str, float] = {
    "order.created": 0.12,
    "order.updated": 0.07,
    "order.deleted": 0.03,
    "goods.created": 0.50,
    "goods.renamed": 0.10,
    "goods.moved": 0.12,
    "goods.deleted": 0.06,
}


class _LiveSet:
    """Ids with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.index: dict[int, int] = {}

    def add(self, item: int) -> None:
        self.index[item] = len(self.items)
        self.items.append(item)

    def remove(self, item: int) -> None:
        i = self.index.pop(item)
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i

    def choice(self, rng: random.Random) -> int:
        return self.items[rng.randrange(len(self.items))]

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Generator:
    """Builds a consistent event stream and knows the read model it must produce."""

    seed: int = 7
    rng: random.Random = field(init=False)
    orders: dict[int, list[Any]] = field(default_factory=dict)  # id -> [version, user_id, created_at]
    goods: dict[int, list[Any]] = field(default_factory=dict)  # id -> [version, order_id, name, created_at]
    live_orders: _LiveSet = field(default_factory=_LiveSet)
    live_goods: _LiveSet = field(default_factory=_LiveSet)
    next_order: int = 1
    next_goods: int = 1
    kinds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._names = list(MIX)
        self._weights = list(MIX.values())

    def _pick(self) -> str:
        kind = self.rng.choices(self._names, self._weights)[0]
        if kind != "order.created" and len(self.live_orders) < 10:
            return "order.created"
        if kind in ("goods.renamed", "goods.moved", "goods.deleted") and len(self.live_goods) < 10:
            return "goods.created"
        return kind

    def next(self, i: int) -> Event:
        now = BASE_TIME + dt.timedelta(milliseconds=i)
        kind = self._pick()
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        rng = self.rng
        if kind == "order.created":
            oid = self.next_order
            self.next_order += 1
            user = rng.randint(1, 100_000)
            self.orders[oid] = [1, user, now]
            self.live_orders.add(oid)
            return new_event(
                "order.created", oid, 1, OrderData(id=oid, user_id=user, created_at=now, updated_at=now), now
            )
        if kind in ("order.updated", "order.deleted"):
            oid = self.live_orders.choice(rng)
            state = self.orders[oid]
            state[0] += 1
            if kind == "order.updated":
                state[1] = rng.randint(1, 100_000)
                data = OrderData(id=oid, user_id=state[1], created_at=state[2], updated_at=now)
                return new_event("order.updated", oid, state[0], data, now)
            self.live_orders.remove(oid)
            deleted = OrderDeletedData(id=oid, user_id=state[1], created_at=state[2], updated_at=now)
            return new_event("order.deleted", oid, state[0], deleted, now)
        if kind == "goods.created":
            gid = self.next_goods
            self.next_goods += 1
            # 2%: an order that is announced later (goods before their order).
            order_id = self.next_order + rng.randint(0, 20) if rng.random() < 0.02 else self.live_orders.choice(rng)
            name = f"goods {gid}"
            self.goods[gid] = [1, order_id, name, now]
            self.live_goods.add(gid)
            data_g = GoodsData(id=gid, order_id=order_id, name=name, created_at=now, updated_at=now)
            return new_event("goods.created", gid, 1, data_g, now)
        gid = self.live_goods.choice(rng)
        state = self.goods[gid]
        state[0] += 1
        if kind == "goods.deleted":
            self.live_goods.remove(gid)
            gone = GoodsDeletedData(id=gid, order_id=state[1], name=state[2], created_at=state[3], updated_at=now)
            return new_event("goods.deleted", gid, state[0], gone, now)
        if kind == "goods.moved":
            state[1] = self.live_orders.choice(rng)
        else:
            state[2] = f"goods {gid} v{state[0]}"
        data_g = GoodsData(id=gid, order_id=state[1], name=state[2], created_at=state[3], updated_at=now)
        return new_event("goods.updated", gid, state[0], data_g, now)

    def expected_counts(self) -> dict[int, int]:
        """goods_count of every order that is known and not deleted."""
        counts = dict.fromkeys(self.live_orders.items, 0)
        for gid in self.live_goods.items:
            order_id = self.goods[gid][1]
            if order_id in counts:
                counts[order_id] += 1
        return counts


async def produce(
    bs: BenchStack, prefix: str, events: int, partitions: int | None = None
) -> tuple[Generator, dict[str, Any]]:
    """`events` of a new Generator's stream into the prefix's topics of `partitions` (default: the stack's)."""
    gen = Generator()
    producer = AIOKafkaProducer(
        bootstrap_servers=bs.stack.kafka.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    partitioner = DefaultPartitioner()
    all_partitions = list(range(partitions or bs.config.kafka_partitions))
    started = time.monotonic()
    try:
        # One batch builder per topic-partition, partitioned by key exactly as
        # the relay's producer does (murmur2), sent with send_batch: the bench's
        # producer is not what is measured and should not take minutes.
        batches: dict[tuple[str, int], Any] = {}
        pending: list[asyncio.Future[Any]] = []
        with tqdm(total=events, desc="generate + produce events", unit="ev", unit_scale=True) as bar:
            for i in range(events):
                event = gen.next(i)
                topic = prefix + event.topic
                key, value = event.key, event.to_json()
                part = partitioner(key, all_partitions, all_partitions)
                batch = batches.get((topic, part))
                if batch is None:
                    batch = batches[(topic, part)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=part))
                    batch = batches[(topic, part)] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
                if i % 5000 == 4999:
                    bar.update(5000)
            for (topic, part), batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=part))
            await asyncio.gather(*pending)
            bar.update(events % 5000)
        await producer.flush()
    finally:
        await producer.stop()
    seconds = time.monotonic() - started
    return gen, {
        "events": events,
        "seconds": round(seconds, 1),
        "rate": round(events / seconds),
        "kinds": gen.kinds,
        "orders_created": gen.next_order - 1,
        "goods_created": gen.next_goods - 1,
    }


async def end_offsets(bs: BenchStack, prefix: str, partitions: int | None = None) -> int:
    """Sum of the end offsets of the prefix's event topics: the number of events in them."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bs.stack.kafka.bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [
            TopicPartition(prefix + t, p)
            for t in ("order.events", "goods.events")
            for p in range(partitions or bs.config.kafka_partitions)
        ]
        ends = await consumer.end_offsets(tps)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


async def reset_read_model(bs: BenchStack) -> None:
    conn = await bs.connect("order_history")
    try:
        # Like `python -m order_history reset`: TRUNCATE leaves the tables' statistics
        # "unknown", as on a fresh database (an ANALYZE of the empty tables would make
        # the planner believe they stay empty, and cached plans would seq-scan).
        await conn.execute("DROP SCHEMA IF EXISTS baseline CASCADE")
        await conn.execute("TRUNCATE orders, goods, consumer_positions, dead_letters")
    finally:
        await conn.close()
    await bs.checkpoint()  # the next trial starts clean (see BenchStack.checkpoint)


async def verify(bs: BenchStack, gen: Generator) -> dict[str, Any]:
    conn = await bs.connect("order_history")
    try:
        rows = await conn.fetch("SELECT id, goods_count FROM orders WHERE known AND NOT deleted")
        got = {r["id"]: r["goods_count"] for r in rows}
        want = gen.expected_counts()
        wrong = sum(1 for k in want.keys() | got.keys() if got.get(k) != want.get(k))
        live_goods = await conn.fetchval("SELECT count(*) FROM goods WHERE NOT deleted")
        recount = await conn.fetchval(
            """SELECT count(*) FROM orders o
               LEFT JOIN (SELECT order_id, count(*) AS n FROM goods WHERE NOT deleted GROUP BY order_id) c
                      ON c.order_id = o.id
               WHERE o.goods_count <> coalesce(c.n, 0)"""
        )
        dead = await conn.fetchval("SELECT count(*) FROM dead_letters")
    finally:
        await conn.close()
    return {
        "listed_orders": len(got),
        "expected_orders": len(want),
        "orders_with_wrong_count": wrong,
        "live_goods": live_goods,
        "expected_live_goods": len(gen.live_goods),
        "goods_count_differs_from_recount": recount,
        "dead_letters": dead,
        "correct": wrong == 0 and live_goods == len(gen.live_goods) and recount == 0 and dead == 0,
    }


async def run_consumer_trial(
    bs: BenchStack,
    prefix: str,
    group: str,
    total: int,
    timeout: float,
    profile_to: Path | None,
    trial: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    proc = bs.process(
        f"consumer-{trial}", ["order_history", "consumer"], prefix, ORDER_HISTORY_CONSUMER_GROUP=group, **(env or {})
    )
    conn = await bs.connect("order_history")
    meter = CpuMeter(
        {"consumer": lambda: [p for p in [proc.pid()] if p], "postgres": bs.postgres_pids, "kafka": bs.kafka_pids}
    )
    result: dict[str, Any] = {}
    profiler: Profiler | None = None
    try:
        meter.start()
        started = time.monotonic()
        proc.start()
        first: float | None = None
        applied = 0
        with tqdm(total=total, desc=f"consumer trial {trial + 1}", unit="ev", unit_scale=True) as bar:
            while applied < total:
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"consumer applied {applied} of {total} events in {timeout:.0f}s")
                if proc.exited_early():
                    raise RuntimeError(f"consumer exited; last lines of {proc.log_file}:\n{proc.tail()}")
                await asyncio.sleep(0.05)
                now_applied = int(
                    await conn.fetchval(
                        "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer_group = $1", group
                    )
                )
                if now_applied and first is None:
                    first = time.monotonic()
                    pid = proc.pid()
                    if profile_to is not None and pid is not None:
                        expected = max(2.0, total / 40_000 * 0.8)
                        profiler = Profiler(pid, expected, profile_to)
                        profiler.start()
                bar.update(now_applied - applied)
                applied = now_applied
        done = time.monotonic()
        pid = proc.pid()
        result = {
            "events": total,
            "seconds_from_start": done - started,
            "seconds_from_first_batch": done - (first or done),
            "cpu_percent_of_one_core": meter.stop(),
            # A cold start from a backlog fills every lane and fetch buffer all the way:
            # the most memory the consumer's settings let it hold in flight.
            "peak_mib": proc_mib(pid, "status", "VmHWM") if pid else 0.0,
        }
        if profiler is not None:
            result["profile_top"] = profiler.finish()
    finally:
        proc.stop(timeout=10)
        await conn.close()
    return result


def run_worker(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "bench.workers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
        env={**os.environ, **(env or {})},
    )
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"bench.workers {args[0]} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds_process_wall"] = wall
    return result


@dataclass
class _Stream:
    """The produced event stream: its topic prefix, the generator that knows the right state, and its figures."""

    prefix: str
    gen: Generator
    produced: dict[str, Any]
    total: int
    bootstrap: str


@dataclass
class _Trials:
    """Results of every reader's trials, and the read-model checks after the consumer trials."""

    consumer: list[dict[str, Any]] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    json: list[dict[str, Any]] = field(default_factory=list)
    naive: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


async def _produce_stream(bs: BenchStack, scale: Scale, section: Section) -> _Stream:
    """Topics of a new prefix, an empty read model, and the event stream produced into the topics."""
    prefix = f"bench-proj-{int(time.time())}-"
    await bs.create_topics(prefix)
    await reset_read_model(bs)
    with step(f"producing {scale.events:,} events into {prefix}order.events / {prefix}goods.events"):
        gen, produced = await produce(bs, prefix, scale.events)
    total = await end_offsets(bs, prefix)
    produced["end_offsets_sum"] = total
    section.data["produced"] = produced
    log(f"produced: {json.dumps(produced)}")
    return _Stream(prefix, gen, produced, total, bs.stack.kafka.bootstrap)


def _raw_args(stream: _Stream, parse: str) -> list[str]:
    """Arguments of `bench.workers raw` reading the whole stream, parsing with `parse`."""
    return [
        "raw",
        "--bootstrap",
        stream.bootstrap,
        "--prefix",
        stream.prefix,
        "--expect",
        str(stream.total),
        "--parse",
        parse,
    ]


async def _consumer_trial(
    bs: BenchStack,
    scale: Scale,
    stream: _Stream,
    trial: int,
    profile_to: Path | None,
    trials: _Trials,
    env: dict[str, str],
) -> None:
    """One trial of the real consumer from an empty read model, then the check of the read model it built."""
    await reset_read_model(bs)
    group = f"{stream.prefix}order-history-{trial}"
    if trial == 0:
        await bs.reset_statement_stats()
    result = await run_consumer_trial(
        bs,
        stream.prefix,
        group,
        stream.total,
        scale.projection_timeout_s,
        profile_to,
        trial,
        env,
    )
    check = await verify(bs, stream.gen)
    result["check"] = check
    if trial == 0:
        result["statements"] = await bs.statement_stats("order_history")
    trials.consumer.append(result)
    trials.checks.append(check)
    log(
        f"consumer trial {trial + 1}: {stream.total / result['seconds_from_start']:,.0f} events/s end to end; "
        f"check {check}"
    )


def _raw_trials(scale: Scale, stream: _Stream, trial: int, trials: _Trials, env: dict[str, str]) -> None:
    """The raw reader with decode_event (in the first trial also with orjson.loads), with the
    consumer's environment: the same fetch settings."""
    with step(f"raw read + decode_event trial {trial + 1}"):
        trials.raw.append(run_worker(_raw_args(stream, "decode"), scale.projection_timeout_s, env))
    if trial == 0:
        with step("raw read + orjson.loads"):
            trials.json.append(run_worker(_raw_args(stream, "json"), scale.projection_timeout_s, env))


async def _naive_trial(bs: BenchStack, scale: Scale, stream: _Stream, trials: _Trials) -> None:
    """The naive consumer (one event per transaction) for a bounded time, between read-model resets."""
    await reset_read_model(bs)
    with step(f"naive consumer (one event per transaction) for {scale.naive_seconds:.0f}s"):
        trials.naive.append(
            run_worker(
                [
                    "naive",
                    "--bootstrap",
                    stream.bootstrap,
                    "--prefix",
                    stream.prefix,
                    "--dsn",
                    bs.dsn("order_history"),
                    "--group",
                    f"{stream.prefix}naive",
                    "--seconds",
                    str(scale.naive_seconds),
                ],
                scale.naive_seconds + 120,
            )
        )
    await reset_read_model(bs)


async def _measure_trials(
    bs: BenchStack, scale: Scale, report: Report, stream: _Stream, profile: bool, results_dir: Path | None
) -> _Trials:
    """Side by side: each trial runs the real consumer, then the raw reader; the naive consumer last."""
    trials = _Trials()
    stamp = f"{report.started:%Y%m%dT%H%M%S}-{scale.name}"
    env = extra_env(scale.consumer_env)
    for trial in range(scale.projection_trials):
        profile_to = results_dir / f"{stamp}-consumer-pyspy.txt" if profile and results_dir and trial == 0 else None
        await _consumer_trial(bs, scale, stream, trial, profile_to, trials, env)
        _raw_trials(scale, stream, trial, trials, env)
    await _naive_trial(bs, scale, stream, trials)
    return trials


def _rates(trials: list[dict[str, Any]], key: str) -> list[float]:
    """Events per second of each trial, timed by `key`."""
    return [t["events"] / t[key] for t in trials if t[key] > 0]


def _cell(values: list[float]) -> str:
    """Median (min-max) of the values; a dash when there are none."""
    if not values:
        return "–"
    return f"{fmt(median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def _report_rates(section: Section, scale: Scale, stream: _Stream, trials: _Trials) -> tuple[float, float, float]:
    """The trials' data and the table of rates: (consumer e2e, raw e2e, naive steady), medians in events/s."""
    consumer_e2e = _rates(trials.consumer, "seconds_from_start")
    consumer_steady = _rates(trials.consumer, "seconds_from_first_batch")
    raw_e2e = _rates(trials.raw, "seconds_process_wall")
    raw_steady = _rates(trials.raw, "seconds_from_first")
    json_e2e = _rates(trials.json, "seconds_process_wall")
    json_steady = _rates(trials.json, "seconds_from_first")
    naive_steady = _rates(trials.naive, "seconds_from_first")

    c_e2e = median(consumer_e2e)
    r_e2e = median(raw_e2e)
    n_steady = median(naive_steady)
    section.data.update(
        consumer=trials.consumer,
        raw_decode=trials.raw,
        raw_json=trials.json,
        naive=trials.naive,
    )
    section.table(
        f"events/s over {stream.total:,} events, median (min–max) of trials",
        [
            "reader",
            "trials",
            "end to end (from process start)",
            "steady (from first batch)",
            "consumer e2e as share / multiple",
        ],
        [
            ["order-history consumer (batched)", len(consumer_e2e), _cell(consumer_e2e), _cell(consumer_steady), "–"],
            [
                "raw: aiokafka read + decode_event",
                len(raw_e2e),
                _cell(raw_e2e),
                _cell(raw_steady),
                f"{fmt(100 * ratio(c_e2e, r_e2e))}% of it",
            ],
            [
                "raw: aiokafka read + orjson.loads",
                len(json_e2e),
                _cell(json_e2e),
                _cell(json_steady),
                f"{fmt(100 * ratio(c_e2e, median(json_e2e)))}% of it",
            ],
            [
                f"naive: one event per transaction ({scale.naive_seconds:.0f} s, {trials.naive[0]['events']:,} events)",
                len(naive_steady),
                "–",
                _cell(naive_steady),
                f"{fmt(ratio(c_e2e, n_steady))}x it",
            ],
        ],
    )
    return c_e2e, r_e2e, n_steady


def _report_notes(section: Section, bs: BenchStack, stream: _Stream, trials: _Trials, consumer_env: str) -> None:
    """Notes on the stream, the method, the checks and CPU; the profile and statement tables."""
    produced = stream.produced
    section.note(
        f"Stream: {produced['events']:,} events ({produced['kinds']}), {produced['orders_created']:,} orders and "
        f"{produced['goods_created']:,} goods; produced in {produced['seconds']} s by an idempotent aiokafka producer "
        f"({produced['rate']:,} events/s); {bs.config.kafka_partitions} partitions per topic."
    )
    section.note(
        "Consumer: `python -m order_history consumer` as a process, from an empty read model, until consumer_positions "
        "reach the topics' end offsets (polled every 50 ms). End to end includes process start, Kafka group join and "
        "the first fetch. Raw and naive run as processes too, with the consumer's fetch settings and no group."
    )
    section.note(
        "Read model after each consumer trial equals the generator's state: "
        f"{[c['correct'] for c in trials.checks]} ({trials.checks[-1]})."
    )
    section.note(
        f"CPU during the consumer trials (% of one core): {[t['cpu_percent_of_one_core'] for t in trials.consumer]}"
    )
    section.note(
        "Peak resident memory (VmHWM, MiB) from a cold start on the whole backlog: consumer "
        f"{[round(t['peak_mib'], 1) for t in trials.consumer]}, raw read + decode_event "
        f"{[round(t['peak_mib'], 1) for t in trials.raw]}"
        + (f"; consumer environment {consumer_env}" if consumer_env else "")
        + "."
    )
    if trials.consumer and trials.consumer[0].get("profile_top"):
        section.table(
            "py-spy of the consumer process (first trial): hottest frames",
            ["frame", "self %", "inclusive %"],
            [[f, s, i] for f, s, i in trials.consumer[0]["profile_top"]],
        )

    if trials.consumer and trials.consumer[0].get("statements"):
        section.table(
            "pg_stat_statements in order_history during the first consumer trial (and the checks after it)",
            ["statement", "calls", "total ms", "mean ms", "rows"],
            trials.consumer[0]["statements"],
        )


def _report_goals(report: Report, c_e2e: float, r_e2e: float, n_steady: float, checks: list[dict[str, Any]]) -> None:
    """The measurement's goals: consumer rate, ratios to naive and raw, and correctness."""
    report.goal(
        "2 projection", "consumer events/s, cold start, end to end", c_e2e, "ev/s", ">= 30,000 ev/s", c_e2e >= 30_000
    )
    report.goal(
        "2 projection",
        "consumer / naive one-per-transaction",
        ratio(c_e2e, n_steady),
        "x",
        ">= 10x",
        ratio(c_e2e, n_steady) >= 10,
    )
    report.goal(
        "2 projection",
        "consumer / raw read + decode_event (e2e)",
        100 * ratio(c_e2e, r_e2e),
        "%",
        ">= 50%",
        ratio(c_e2e, r_e2e) >= 0.5,
    )
    report.goal(
        "2 projection",
        "read model equals the generator's state",
        float(sum(c["correct"] for c in checks)),
        f"of {len(checks)} trials",
        "all",
        all(c["correct"] for c in checks),
    )


async def run(
    bs: BenchStack, scale: Scale, report: Report, profile: bool = False, results_dir: Path | None = None
) -> None:
    """Measurement 2: produce the stream, time the readers' trials, and report."""
    section = report.section("projection", "2. Projection throughput")
    stream = await _produce_stream(bs, scale, section)
    trials = await _measure_trials(bs, scale, report, stream, profile, results_dir)
    c_e2e, r_e2e, n_steady = _report_rates(section, scale, stream, trials)
    _report_notes(section, bs, stream, trials, scale.consumer_env)
    _report_goals(report, c_e2e, r_e2e, n_steady, trials.checks)
