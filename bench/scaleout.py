"""7. Scale-out: one consumer group of 1, 2 and 3 instances over topics of 12 partitions, and its pauses.

Apply rate. A stream of `scaleout_events` mixed events (the projection's
Generator) is produced into topics of SCALEOUT_PARTITIONS partitions. For each
instance count, from an empty read model, the instances start together in one
group and the time until the stored positions reach the end offsets is taken;
the CPU of the consumers, of PostgreSQL and of Kafka, and the whole machine's,
are measured beside it. Every run ends with the projection's read-model check.

Pauses. Events are produced at `scaleout_rate` per second into topics of their
own while two instances apply them; then a third joins, one is stopped with
SIGTERM (it leaves the group), and one is killed with -9 (the group notices
after the session timeout). Positions are sampled every SAMPLE seconds; a
partition's pause is the longest time its position did not move in the
`scaleout_settle_seconds` after the change, while events kept arriving. The
group's pause is the longest of all partitions; the median partition shows what
the other instances' partitions went through (aiokafka rebalances eagerly:
every member gives up its partitions until the group has settled).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from devstack.processes import ManagedProcess

from .config import Scale
from .env import BenchStack, log, step
from .projection import Generator, end_offsets, produce, reset_read_model, verify
from .report import Report, Section
from .stats import CpuMeter

SCALEOUT_PARTITIONS = 12
INSTANCES = (1, 2, 3)
SAMPLE = 0.05
SESSION_TIMEOUT_MS = 10000  # the consumer's default (ORDER_HISTORY_SESSION_TIMEOUT_MS)

_POSITIONS = "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer_group = $1"


def consumer(bs: BenchStack, prefix: str, group: str, name: str) -> ManagedProcess:
    return bs.process(
        name,
        ["order_history", "consumer"],
        prefix,
        ORDER_HISTORY_CONSUMER_GROUP=group,
        ORDER_HISTORY_METRICS_PORT="0",  # several instances on one machine
        ORDER_HISTORY_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
    )


async def apply_rate(bs: BenchStack, scale: Scale, prefix: str, gen: Generator, total: int, count: int) -> list[Any]:
    """`count` instances from an empty read model to the end of the stream: one row of the table."""
    await reset_read_model(bs)
    group = f"{prefix}group-{count}"
    procs = [consumer(bs, prefix, group, f"scale-{count}-{i}") for i in range(count)]
    meter = CpuMeter(
        {
            "consumers": lambda: [p for p in (proc.pid() for proc in procs) if p],
            "postgres": bs.postgres_pids,
            "kafka": bs.kafka_pids,
        }
    )
    conn = await bs.connect("order_history")
    try:
        meter.start()
        started = time.monotonic()
        for proc in procs:
            proc.start()
        applied = 0
        with tqdm(total=total, desc=f"{count} instance(s)", unit="ev", unit_scale=True) as bar:
            while applied < total:
                if time.monotonic() - started > scale.projection_timeout_s:
                    raise RuntimeError(f"{count} instance(s) applied {applied} of {total} events in time")
                for proc in procs:
                    if proc.exited_early():
                        raise RuntimeError(f"{proc.name} exited; last lines of {proc.log_file}:\n{proc.tail()}")
                await asyncio.sleep(SAMPLE)
                now = int(sum(r["next_offset"] for r in await conn.fetch(_POSITIONS, group)))
                bar.update(now - applied)
                applied = now
        seconds = time.monotonic() - started
        cpu = meter.stop()
    finally:
        for proc in procs:
            proc.stop(timeout=10)
        await conn.close()
    check = await verify(bs, gen)
    if not check["correct"]:
        raise RuntimeError(f"{count} instance(s) built a wrong read model: {check}")
    log(f"{count} instance(s): {total / seconds:,.0f} events/s; CPU {cpu}")
    cores = os.cpu_count() or 1
    return [
        count,
        round(total / seconds),
        round(seconds, 1),
        cpu["consumers"],
        cpu["postgres"],
        cpu["kafka"],
        f"{cpu['whole machine']:.0f} of {cores * 100}",
    ]


@dataclass
class _Positions:
    """Every SAMPLE seconds: when each partition's stored position last moved."""

    samples: list[tuple[float, dict[tuple[str, int], int]]] = field(default_factory=list)

    def pauses(self, start: float, end: float) -> list[float]:
        """Per partition: the longest time without a move of its position between start and end."""
        window = [(t, pos) for t, pos in self.samples if start <= t <= end]
        if not window:
            return []
        longest: dict[tuple[str, int], float] = {}
        moved: dict[tuple[str, int], tuple[float, int]] = {}
        for t, positions in window:
            for tp, offset in positions.items():
                last = moved.get(tp)
                if last is None or offset != last[1]:
                    if last is not None:
                        longest[tp] = max(longest.get(tp, 0.0), t - last[0])
                    moved[tp] = (t, offset)
        final = window[-1][0]
        for tp, (t, _) in moved.items():  # still not moving at the window's end
            longest[tp] = max(longest.get(tp, 0.0), final - t)
        return sorted(longest.values())


async def paced(producer: AIOKafkaProducer, prefix: str, gen: Generator, rate: int, stop: asyncio.Event) -> int:
    """Produce the generator's events at `rate` per second until `stop`; how many."""
    sent = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        futures = []
        while sent < due:
            event = gen.next(sent)
            futures.append(await producer.send(prefix + event.topic, key=event.key, value=event.to_json()))
            sent += 1
        if futures:
            await asyncio.gather(*futures)
        await asyncio.sleep(SAMPLE / 2)
    return sent


@dataclass
class _Group:
    """Instances of one group applying a paced stream, and the positions sampled meanwhile."""

    bs: BenchStack
    prefix: str
    conn: asyncpg.Connection  # of the read database
    load: asyncio.Task[int]
    positions: _Positions = field(default_factory=_Positions)
    procs: list[ManagedProcess] = field(default_factory=list)
    changes: list[tuple[str, float, float]] = field(default_factory=list)  # what, monotonic and wall clock
    alive: list[set[str]] = field(default_factory=list)  # per change: the instances running at its end

    @property
    def group(self) -> str:
        return f"{self.prefix}group"

    async def applied(self) -> int:
        return int(sum(r["next_offset"] for r in await self.conn.fetch(_POSITIONS, self.group)))

    async def sample_for(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if self.load.done():
                self.load.result()  # the producer failed: say why
            rows = await self.conn.fetch(_POSITIONS, self.group)
            now = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            self.positions.samples.append((time.monotonic(), now))
            await asyncio.sleep(SAMPLE)

    async def change(self, what: str, make: Callable[[], object], settle: float) -> None:
        self.changes.append((what, time.monotonic(), time.time()))
        make()
        await self.sample_for(settle)
        self.alive.append({p.name for p in self.procs if p.running()})

    def rows(self) -> list[list[object]]:
        rows: list[list[object]] = []
        for i, (what, at, wall) in enumerate(self.changes):
            last = i + 1 == len(self.changes)
            end = self.positions.samples[-1][0] if last else self.changes[i + 1][1]
            found = self.positions.pauses(at, end)
            held, rebalance = assignments(self.procs, self.alive[i], wall, wall + (end - at))
            rows.append([what, round(found[-1], 2), round(statistics.median(found), 2), rebalance, held])
        return rows


def assignments(procs: list[ManagedProcess], alive: set[str], start: float, end: float) -> tuple[str, float | None]:
    """From the instances' logs between two wall-clock times: the partitions each holds at the end
    ("12/12/-"), and the seconds from the change to the last assignment (None: no rebalance)."""
    held: list[str] = []
    last_assigned: float | None = None
    for proc in procs:
        count: int | None = None
        for line in proc.log_file.read_text(errors="replace").splitlines() if proc.log_file.exists() else []:
            if '"partitions assigned"' not in line:
                continue
            entry = json.loads(line)
            at = dt.datetime.fromisoformat(entry["ts"]).timestamp()
            if at <= end:
                count = len(entry.get("partitions", []))
            if start <= at <= end:
                last_assigned = max(last_assigned or at, at)
        held.append("-" if count is None or proc.name not in alive else str(count))
    return "/".join(held), None if last_assigned is None else round(last_assigned - start, 2)


async def pauses(bs: BenchStack, scale: Scale, section: Section) -> None:
    """Two instances under a paced load; a third joins, one leaves, one dies: the pause of each change."""
    prefix = f"bench-pause-{int(time.time())}-"
    await bs.create_topics(prefix, SCALEOUT_PARTITIONS)
    await reset_read_model(bs)
    gen = Generator(seed=11)
    producer = AIOKafkaProducer(bootstrap_servers=bs.stack.kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    stop = asyncio.Event()
    group = _Group(
        bs,
        prefix,
        await bs.connect("order_history"),
        asyncio.create_task(paced(producer, prefix, gen, scale.scaleout_rate, stop)),
    )
    procs = group.procs = [consumer(bs, prefix, group.group, f"pause-{i}") for i in range(3)]
    settle = scale.scaleout_settle_seconds
    try:
        with step(f"two instances under {scale.scaleout_rate} events/s, then a join, a leave and a kill -9"):
            procs[0].start()
            procs[1].start()
            await group.sample_for(settle)
            await group.change("steady, 2 instances (no change)", lambda: None, settle)
            await group.change("a third instance joins", procs[2].start, settle)
            await group.change("an instance stops (SIGTERM: leaves the group)", lambda: procs[0].stop(10), settle)
            await group.change("an instance is killed (kill -9)", procs[1].kill9, settle + SESSION_TIMEOUT_MS / 1000)
    finally:
        stop.set()
        sent = await group.load
        await producer.stop()
    try:
        with step("the last instance catches up"):
            total = await end_offsets(bs, prefix, SCALEOUT_PARTITIONS)
            deadline = time.monotonic() + scale.projection_timeout_s
            while await group.applied() < total:
                if time.monotonic() > deadline:
                    raise RuntimeError("the remaining instance did not catch up")
                await asyncio.sleep(0.2)
    finally:
        for proc in procs:
            proc.stop(timeout=10)
        await group.conn.close()
    check = await verify(bs, gen)
    rows = group.rows()
    section.table(
        f"Pauses: {scale.scaleout_rate:,} events/s over {SCALEOUT_PARTITIONS} partitions × 2 topics; "
        f"session timeout {SESSION_TIMEOUT_MS / 1000:.0f} s",
        [
            "change",
            "longest partition pause (s)",
            "median partition pause (s)",
            "change → last assignment (s)",
            "partitions held after",
        ],
        rows,
    )
    section.data["pauses"] = {"rows": rows, "events": sent, "check": check}
    if not check["correct"]:
        raise RuntimeError(f"the group built a wrong read model across the changes: {check}")


async def run(bs: BenchStack, scale: Scale, report: Report) -> None:
    section = Section("scaleout", f"Scale-out: 1–3 consumer instances over {SCALEOUT_PARTITIONS} partitions")
    report.sections.append(section)
    prefix = f"bench-scale-{int(time.time())}-"
    await bs.create_topics(prefix, SCALEOUT_PARTITIONS)
    await reset_read_model(bs)
    with step(f"producing {scale.scaleout_events:,} events into {SCALEOUT_PARTITIONS} partitions per topic"):
        gen, _ = await produce(bs, prefix, scale.scaleout_events, SCALEOUT_PARTITIONS)
    total = await end_offsets(bs, prefix, SCALEOUT_PARTITIONS)
    rows = [await apply_rate(bs, scale, prefix, gen, total, count) for count in INSTANCES]
    section.table(
        f"Apply rate from an empty read model: {total:,} events; CPU in % of one core over the run",
        ["instances", "events/s", "seconds", "consumers CPU", "PostgreSQL CPU", "Kafka CPU", "machine CPU"],
        rows,
    )
    section.data["apply"] = rows
    await pauses(bs, scale, section)
    section.note(
        "Every run's read model was checked against the generator's state (counts, live goods, recount, no "
        "dead letters)."
    )
