"""`order-history status [--json]`: what an operator asks first about the read side.

Per partition: the stored position (the next offset to apply), the log's start
and end, the lag (end minus position), and whether it is stuck (it has lag and
its position has not moved for ORDER_HISTORY_STUCK_AFTER seconds: a record holds
it, see `order-history dlq skip`); the consumers in the group; the dead letters
and parked records; how long ago the newest change in the read model happened;
what the divergence sampler found (rows counted divergent, with the first of
them, and how long ago the newest complete pass began: order_history/ops/sampler.py)
and the orphan goods (order_history/ops/orphans.py); how current the read model is,
as the API tells it in every answer (watermark and staleness, in all and per
partition: docs/freshness.md).
Read from the read database (positions, dead letters, rows, the sampler's
state) and from Kafka (log bounds, group); exits 1 with the reason when either
cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from order_history.api import freshness
from order_history.ops import orphans, sampler
from order_history.ops.operations import OperationError, group_members, log_bounds
from order_history.projection.positions import PartitionFreshness
from order_history.settings import Settings
from shared.database import WAIT_OUT_ERRORS
from shared.events import TOPICS
from shared.kafka import KafkaRefused

_POSITIONS = """SELECT topic, partition, next_offset, extract(epoch FROM now() - updated_at) AS still,
                       newest_occurred_at, caught_up_at
                FROM consumer_positions WHERE consumer_group = $1"""
_READ_MODEL = """SELECT
    (SELECT count(*) FROM dead_letters WHERE NOT parked) AS dead_letters,
    (SELECT count(*) FROM dead_letters WHERE parked) AS parked,
    (SELECT max(recorded_at) FROM dead_letters) AS last_dead_letter,
    greatest((SELECT max(updated_at) FROM orders), (SELECT max(updated_at) FROM goods)) AS newest_change,
    now() AS now"""
_DIVERGENT_SHOWN = 20  # rows listed; the count is whole


async def gather(settings: Settings) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        rows = await conn.fetch(_POSITIONS, settings.consumer_group)
        now = time.time()  # the staleness as of this read of the positions
        row = await conn.fetchrow(_READ_MODEL)
        divergence = await sampler.report(conn, _DIVERGENT_SHOWN)
        waiting = await orphans.figures(conn)
    finally:
        await conn.close()
    assert row is not None
    stored = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    still = {TopicPartition(r["topic"], r["partition"]): float(r["still"]) for r in rows}
    fresh = {
        TopicPartition(r["topic"], r["partition"]): PartitionFreshness(
            r["topic"], r["partition"], r["newest_occurred_at"], r["caught_up_at"]
        )
        for r in rows
    }
    partitions = []
    kafka_topics = [settings.kafka_topic_prefix + topic for topic in TOPICS]
    starts, ends = await log_bounds(settings, *kafka_topics)
    for topic in kafka_topics:
        for tp, end in sorted((tp, end) for tp, end in ends.items() if tp.topic == topic):
            position = stored.get(tp)
            behind = end - (position if position is not None else starts[tp])
            known = fresh.get(tp)
            partitions.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "position": position,
                    "log_start": starts[tp],
                    "log_end": end,
                    "lag": behind,
                    "fits": position is None or starts[tp] <= position <= end,
                    # The consumer stores a partition's position from its assignment on (None: no
                    # consumer has been assigned it yet).
                    "unmoved_seconds": still.get(tp),
                    "stuck": behind > 0 and still.get(tp, 0.0) > settings.stuck_after,
                    "newest_occurred_at": _iso(None if known is None else known.newest),
                    "caught_up_at": _iso(None if known is None else known.caught_up),
                    "staleness_ms": None if known is None else _ms(known.as_of, now),
                }
            )
    newest: dt.datetime | None = row["newest_change"]
    answers = freshness.snapshot(list(fresh.values()), settings.kafka_topic_prefix)
    return {
        "consumer_group": settings.consumer_group,
        "consumers": await group_members(settings),
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
        "newest_change_age_seconds": None if newest is None else (row["now"] - newest).total_seconds(),
        "stuck_partitions": [f"{p['topic']}[{p['partition']}]" for p in partitions if p["stuck"]],
        "watermark": {topic: _iso(at) for topic, at in answers.watermarks.items()},
        "staleness_ms": answers.staleness_ms(now),
        "dead_letters": row["dead_letters"],
        "parked": row["parked"],
        "last_dead_letter": None if row["last_dead_letter"] is None else row["last_dead_letter"].isoformat(),
        "divergence": divergence,
        "orphans": {
            "orphan_goods": waiting.goods,
            "orders_waited_for": waiting.orders,
            "oldest_age_seconds": waiting.oldest_age,
        },
    }


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _ms(at: dt.datetime | None, now: float) -> int | None:
    return None if at is None else max(0, round((now - at.timestamp()) * 1000))


def render(report: dict[str, Any]) -> str:
    lines = [f"consumer group {report['consumer_group']}: {report['consumers']} consumer(s) running", ""]
    header = ("topic", "partition", "position", "log start", "log end", "lag", "staleness", "")
    rows = [
        (
            p["topic"],
            str(p["partition"]),
            "-" if p["position"] is None else str(p["position"]),
            str(p["log_start"]),
            str(p["log_end"]),
            str(p["lag"]),
            "-" if p["staleness_ms"] is None else f"{p['staleness_ms'] / 1000:.1f} s",
            ("" if p["fits"] else "DOES NOT FIT THE LOG")
            or (f"STUCK at offset {p['position']} for {p['unmoved_seconds']:.0f} s" if p["stuck"] else ""),
        )
        for p in report["partitions"]
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    age = report["newest_change_age_seconds"]
    stale = report["staleness_ms"]
    lines += [
        "",
        f"lag: {report['lag']} event(s)",
        "read model staleness: "
        + ("unknown (a partition has no consumer's word yet)" if stale is None else f"{stale} ms")
        + "; watermark: "
        + ", ".join(f"{topic} {'none yet' if at is None else at}" for topic, at in report["watermark"].items()),
        "newest change in the read model: " + ("none yet" if age is None else f"{age:.1f} s ago"),
        f"dead letters: {report['dead_letters']}, parked records: {report['parked']}"
        + (f" (last at {report['last_dead_letter']})" if report["last_dead_letter"] else ""),
    ]
    if report["stuck_partitions"]:
        lines.append(
            f"stuck: {', '.join(report['stuck_partitions'])}: one record holds each; its offset is the position "
            "(`order-history dlq skip TOPIC PARTITION OFFSET` parks it)"
        )
    lines += _divergence_lines(report["divergence"])
    waiting = report["orphans"]
    lines.append(
        f"orphan goods: {waiting['orphan_goods']}"
        + (
            f", waiting for {waiting['orders_waited_for']} order(s), the oldest created "
            f"{waiting['oldest_age_seconds']:.0f} s ago (`order-history orphans` lists them)"
            if waiting["orphan_goods"]
            else ""
        )
    )
    return "\n".join(lines)


def _divergence_lines(found: dict[str, Any]) -> list[str]:
    state = found["sampler"]
    if state is None:
        return ["divergence: the sampler has not run yet (it runs in the consumer processes)"]
    age = found["full_pass_age_seconds"]
    complete = (
        f"the newest complete pass began {age:.0f} s ago and took {state['last_pass_seconds']:.0f} s"
        if state["last_pass_seconds"] is not None
        else f"no pass complete yet (sampling for {age:.0f} s)"
    )
    current = state["pass_in_progress"]
    progress = (
        f"; this pass: {current['ranges_done']} of {current['ranges_total']} id range(s)" if current is not None else ""
    )
    lines = [
        f"divergence: {found['divergent_rows']} divergent row(s), {found['unconfirmed_differences']} difference(s) "
        f"not confirmed yet; {complete}{progress}"
    ]
    for d in found["divergent"]:
        lines.append(
            f"  {d['entity']} {d['id']} {d['field']}: command side {d['command']!r}, read model {d['read']!r} "
            f"(since {d['first_seen_at']})"
        )
    if found["divergent_rows"] > len(found["divergent"]):
        lines.append(f"  ... {found['divergent_rows'] - len(found['divergent'])} more: `order-history reconcile`")
    if found["divergent_rows"]:
        lines.append("  `order-history reconcile --repair` resyncs them")
    return lines


async def status(settings: Settings, as_json: bool) -> int:
    # The reason is printed once, below; the Kafka client's own retry logs would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = await gather(settings)
    except (*WAIT_OUT_ERRORS, KafkaError, KafkaRefused, OperationError) as exc:
        print(f"error: cannot read the status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0
