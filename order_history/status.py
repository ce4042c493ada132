"""`order-history status [--json]`: what an operator asks first about the read side.

Per partition: the stored position (the next offset to apply), the log's start
and end, the lag (end minus position), and whether it is stuck (it has lag and
its position has not moved for ORDER_HISTORY_STUCK_AFTER seconds: a record holds
it, see `order-history dlq skip`); the consumers in the group; the dead letters
and parked records; how long ago the newest change in the read model happened.
Read from the read database (positions, dead letters, rows) and from Kafka
(log bounds, group); exits 1 with the reason when either cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from order_history.operations import OperationError, group_members, log_bounds
from order_history.settings import Settings
from shared.database import WAIT_OUT_ERRORS
from shared.events import TOPICS
from shared.kafka import KafkaRefused

_POSITIONS = """SELECT topic, partition, next_offset, extract(epoch FROM now() - updated_at) AS still
                FROM consumer_positions WHERE consumer_group = $1"""
_READ_MODEL = """SELECT
    (SELECT count(*) FROM dead_letters WHERE NOT parked) AS dead_letters,
    (SELECT count(*) FROM dead_letters WHERE parked) AS parked,
    (SELECT max(recorded_at) FROM dead_letters) AS last_dead_letter,
    greatest((SELECT max(updated_at) FROM orders), (SELECT max(updated_at) FROM goods)) AS newest_change,
    now() AS now"""


async def gather(settings: Settings) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        rows = await conn.fetch(_POSITIONS, settings.consumer_group)
        row = await conn.fetchrow(_READ_MODEL)
    finally:
        await conn.close()
    assert row is not None
    stored = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
    still = {TopicPartition(r["topic"], r["partition"]): float(r["still"]) for r in rows}
    partitions = []
    kafka_topics = [settings.kafka_topic_prefix + topic for topic in TOPICS]
    starts, ends = await log_bounds(settings, *kafka_topics)
    for topic in kafka_topics:
        for tp, end in sorted((tp, end) for tp, end in ends.items() if tp.topic == topic):
            position = stored.get(tp)
            behind = end - (position if position is not None else starts[tp])
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
                }
            )
    newest: dt.datetime | None = row["newest_change"]
    return {
        "consumer_group": settings.consumer_group,
        "consumers": await group_members(settings),
        "partitions": partitions,
        "lag": sum(p["lag"] for p in partitions),
        "newest_change_age_seconds": None if newest is None else (row["now"] - newest).total_seconds(),
        "stuck_partitions": [f"{p['topic']}[{p['partition']}]" for p in partitions if p["stuck"]],
        "dead_letters": row["dead_letters"],
        "parked": row["parked"],
        "last_dead_letter": None if row["last_dead_letter"] is None else row["last_dead_letter"].isoformat(),
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"consumer group {report['consumer_group']}: {report['consumers']} consumer(s) running", ""]
    header = ("topic", "partition", "position", "log start", "log end", "lag", "")
    rows = [
        (
            p["topic"],
            str(p["partition"]),
            "-" if p["position"] is None else str(p["position"]),
            str(p["log_start"]),
            str(p["log_end"]),
            str(p["lag"]),
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
    lines += [
        "",
        f"lag: {report['lag']} event(s)",
        "newest change in the read model: " + ("none yet" if age is None else f"{age:.1f} s ago"),
        f"dead letters: {report['dead_letters']}, parked records: {report['parked']}"
        + (f" (last at {report['last_dead_letter']})" if report["last_dead_letter"] else ""),
    ]
    if report["stuck_partitions"]:
        lines.append(
            f"stuck: {', '.join(report['stuck_partitions'])}: one record holds each; its offset is the position "
            "(`order-history dlq skip TOPIC PARTITION OFFSET` parks it)"
        )
    return "\n".join(lines)


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
