"""Comparison consumers of measurement 2, run as their own processes like the real one.

`python -m bench.workers raw ...`: reads every message of the topics from the
beginning and parses it (`decode_event`, the parse the real consumer does, or
only `orjson.loads`), and applies nothing: the ceiling a projection can reach.

`python -m bench.workers naive ...`: the original design's way: one event per
database transaction (the same projection SQL as the real consumer, with its
position advanced in the same transaction), for a bounded time.

Each prints one JSON line with what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from order_history.projection.positions import Positions
from order_history.projection.statements import apply_batch, reduce_events
from order_history.settings import Settings
from shared.events import TOPICS, decode_event

from .stats import proc_mib


def _consumer(bootstrap: str, topics: list[str]) -> AIOKafkaConsumer:
    # The real consumer's fetch settings (from the same environment), without a group.
    settings = Settings()
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.partition_fetch_max_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )


async def raw(bootstrap: str, prefix: str, expect: int, parse: str, timeout: float) -> dict[str, Any]:
    topics = [prefix + t for t in TOPICS]
    consumer = _consumer(bootstrap, topics)
    started = time.monotonic()
    await consumer.start()
    count = 0
    first: float | None = None
    try:
        deadline = time.monotonic() + timeout
        while count < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            for tp, messages in batch.items():
                if first is None and messages:
                    first = time.monotonic()
                contract = tp.topic.removeprefix(prefix)
                if parse == "decode":
                    for m in messages:
                        decode_event(m.value, contract)
                else:
                    for m in messages:
                        orjson.loads(m.value)
                count += len(messages)
    finally:
        done = time.monotonic()
        await consumer.stop()
    first = first or done
    return {
        "events": count,
        "seconds_from_start": done - started,
        "seconds_from_first": done - first,
        "parse": parse,
        # beside the consumer's: what aiokafka's fetch buffers and the decoding hold without lanes
        # (VmHWM starts afresh at exec; getrusage's ru_maxrss would carry the forking bench's)
        "peak_mib": proc_mib(os.getpid(), "status", "VmHWM"),
    }


async def naive(bootstrap: str, prefix: str, dsn: str, group: str, seconds: float) -> dict[str, Any]:
    topics = [prefix + t for t in TOPICS]
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    consumer = _consumer(bootstrap, topics)
    positions = Positions(group)
    started = time.monotonic()
    await consumer.start()
    count = 0
    first: float | None = None
    prepared: set[TopicPartition] = set()
    try:
        deadline = started + seconds
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            for tp, messages in batch.items():
                if tp not in prepared:
                    async with conn.transaction():
                        await positions.lock(conn, [tp])
                    prepared.add(tp)
                contract = tp.topic.removeprefix(prefix)
                for m in messages:
                    if first is None:
                        first = time.monotonic()
                    event = decode_event(m.value, contract)
                    async with conn.transaction():
                        await apply_batch(conn, reduce_events([event], [(tp.partition, m.offset)]))
                        await positions.advance(conn, {tp: m.offset + 1})
                    count += 1
                    if time.monotonic() >= deadline:
                        break
                if time.monotonic() >= deadline:
                    break
    finally:
        done = time.monotonic()
        await consumer.stop()
        await conn.close()
    first = first or done
    return {"events": count, "seconds_from_start": done - started, "seconds_from_first": done - first}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("kind", choices=["raw", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--parse", choices=["decode", "json"], default="decode")
    parser.add_argument("--dsn", default="")
    parser.add_argument("--group", default="")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.kind == "raw":
        result = asyncio.run(raw(args.bootstrap, args.prefix, args.expect, args.parse, args.timeout))
    else:
        result = asyncio.run(naive(args.bootstrap, args.prefix, args.dsn, args.group, args.seconds))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
