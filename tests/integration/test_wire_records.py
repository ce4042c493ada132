"""Ordinary records any Kafka producer can send: each is applied, dead-lettered or parked, and the
consumer goes on (docs/reliability.md, "Every record on a topic").

Each test here reproduces a way the read side once stopped: a compressed batch, a naive
`occurred_at`, a record with neither key nor value, a dead letter too large to copy.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import GOODS, ORDER, Env, command, wait_until
from tests.readmodel import ExpectedModel, goods_event, order_created, read_model_snapshot
from tests.wire import RawKey, raw_header_keys

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _naive(value: bytes) -> bytes:
    raw = orjson.loads(value)
    raw["occurred_at"] = "2026-01-01T00:00:00"
    return orjson.dumps(raw)


async def _dead_letters(env: Env) -> list[dict[str, object]]:
    history = await env.pool("order_history")
    rows = await history.fetch(
        """SELECT topic, partition, "offset", reason, parked, parked_reason, value_size, value_sha256, message_value
           FROM dead_letters ORDER BY topic, partition, "offset\""""
    )
    return [dict(r) for r in rows]


async def test_every_compression_codec_is_applied(env: Env) -> None:
    """Batches compressed by Kafka's Java producer and by aiokafka, with each codec Kafka has."""
    expected = ExpectedModel()
    await env.start_consumer()
    java = [(codec, order_created(2 * i + oid, 7 + oid)) for i, codec in enumerate(CODECS) for oid in (1, 2)]
    await env.produce_with_java(ORDER, [(codec, e.key, e.to_json()) for codec, e in java])
    for _, event in java:
        expected.apply(event)
    for i, codec in enumerate(CODECS):
        producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, compression_type=codec, linger_ms=5)
        await producer.start()
        try:
            event = order_created(100 + i, 9)
            await producer.send_and_wait(env.topic(ORDER), key=event.key, value=event.to_json())
            expected.apply(event)
        finally:
            await producer.stop()
    await env.wait_caught_up()
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    assert await _dead_letters(env) == []


async def test_a_naive_occurred_at_is_dead_lettered_beside_valid_events(env: Env) -> None:
    """`occurred_at` without a UTC offset, in one batch (one partition) with ordinary events."""
    first, second = order_created(1, 7), order_created(2, 8)
    naive = _naive(order_created(3, 9).to_json())
    await env.produce([(ORDER, b"1", first.to_json()), (ORDER, b"1", naive), (ORDER, b"1", second.to_json())])
    await env.start_consumer()
    await env.wait_caught_up()
    expected = ExpectedModel()
    expected.apply(first)
    expected.apply(second)
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    [letter] = await _dead_letters(env)
    assert "occurred_at" in str(letter["reason"]) and "timezone" in str(letter["reason"])
    assert letter["parked"] is False
    [copy] = await env.read_topic(f"{ORDER}.dlq", expect=1)
    assert copy.value == naive


async def test_a_record_without_key_or_value_is_parked(env: Env) -> None:
    """Kafka takes a record with a null key and a null value; no client can copy it to a DLQ topic."""
    first, second = order_created(1, 7), order_created(2, 8)
    records = [("none", b"1", first.to_json()), ("none", None, None), ("none", b"2", second.to_json())]
    await env.produce_with_java(ORDER, records)
    await env.start_consumer()
    await env.wait_caught_up()
    expected = ExpectedModel()
    expected.apply(first)
    expected.apply(second)
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    [parked] = await _dead_letters(env)
    assert parked["parked"] is True
    assert "tombstone" in str(parked["reason"])
    assert "neither a key nor a value" in str(parked["parked_reason"])
    assert parked["value_size"] is None and parked["value_sha256"] is None
    assert await env.read_topic(f"{ORDER}.dlq", expect=None, timeout=3) == []


async def test_a_dead_letter_too_large_to_copy_is_parked_and_its_partition_goes_on(env: Env) -> None:
    """3 MB of JSON, gzip-compressed to a few KB: Kafka takes it, but its copy is over the DLQ producer's limit."""
    big = orjson.dumps({"event_type": "order.created", "padding": "x" * 3_000_000})
    assert len(gzip.compress(big)) < 100_000
    producer = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap, compression_type="gzip", max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        await producer.send_and_wait(env.topic(ORDER), key=b"1", value=big, partition=0)
        later = [order_created(oid, 7) for oid in range(1, 4)]
        for event in later:  # the same partition, after it
            await producer.send_and_wait(env.topic(ORDER), key=event.key, value=event.to_json(), partition=0)
    finally:
        await producer.stop()
    await env.start_consumer()
    await env.wait_caught_up()
    expected = ExpectedModel()
    for event in later:
        expected.apply(event)
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    [parked] = await _dead_letters(env)
    assert parked["parked"] is True and parked["offset"] == 0
    assert parked["value_size"] == len(big)
    assert parked["value_sha256"] == hashlib.sha256(big).digest()
    assert "too large" in str(parked["parked_reason"])
    kept = parked["message_value"]
    assert isinstance(kept, bytes) and big.startswith(kept) and len(kept) < len(big)


@pytest.mark.parametrize("topic", [ORDER, GOODS])
async def test_unknown_types_on_every_topic_are_dead_lettered(env: Env, topic: str) -> None:
    """The plain case beside the others: a value the consumer does not know goes to `<topic>.dlq`."""
    value = orjson.dumps({"event_type": "something.else"})
    await env.produce([(topic, b"1", value), *[(e.topic, e.key, e.to_json()) for e in [goods_event(1, 1, 1)]]])
    await env.start_consumer()
    await env.wait_caught_up()
    [letter] = await _dead_letters(env)
    assert letter["parked"] is False and letter["value_sha256"] == hashlib.sha256(value).digest()


_JAM = """CREATE FUNCTION jam() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF NEW.name = 'jam' THEN RAISE EXCEPTION 'jammed' USING ERRCODE = 'P0001'; END IF;
              RETURN NEW;
          END $$;
          CREATE TRIGGER jam BEFORE INSERT OR UPDATE ON goods FOR EACH ROW EXECUTE FUNCTION jam();"""
_UNJAM = "DROP TRIGGER IF EXISTS jam ON goods; DROP FUNCTION IF EXISTS jam();"


def _stuck_seconds(topic: str, partition: int) -> float:
    """The consumer's consumer_partition_stuck_seconds for one partition, as /metrics shows it."""
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if family.name == "consumer_partition_stuck_seconds":
            for sample in family.samples:
                if sample.labels == {"topic": topic, "partition": str(partition)}:
                    return float(sample.value)
    return 0.0


async def test_a_stuck_partition_is_reported_and_the_record_holding_it_can_be_skipped(env: Env) -> None:
    """A record the read database refuses with an error the consumer waits out (not one about data) holds
    its partition: status and the metric say so, and `dlq skip` parks that record and nothing else."""
    await env.as_owner("order_history", _UNJAM + _JAM)
    try:
        before, jam, after = goods_event(1, 1, 1, "a"), goods_event(2, 1, 1, "jam"), goods_event(3, 1, 1, "b")
        await env.produce([(GOODS, b"1", before.to_json())])  # one key: one partition
        await env.start_consumer()
        await env.wait_caught_up()
        [(tp, end)] = [(tp, end) for tp, end in (await env.end_offsets((GOODS,))).items() if end]
        topic, partition = tp
        await env.produce([(GOODS, b"1", jam.to_json()), (GOODS, b"1", after.to_json())])

        async def reported_stuck() -> bool:
            return _stuck_seconds(topic, partition) > 2

        await wait_until(reported_stuck, 60, "the partition to be reported stuck")
        status = await command(env, "order_history", "status", "--json", ORDER_HISTORY_STUCK_AFTER="1")
        report = orjson.loads(status.stdout)
        assert report["stuck_partitions"] == [f"{topic}[{partition}]"], status.stdout

        refused = await command(env, "order_history", "dlq", "skip", topic, str(partition), str(end + 1))
        assert refused.returncode == 1
        assert f"the record holding it is at offset {end}, not {end + 1}" in refused.stderr
        skipped = await command(env, "order_history", "dlq", "skip", topic, str(partition), str(end), "--reason", "t")
        assert skipped.returncode == 0, skipped.stderr
        assert f"goes on from offset {end + 1}" in skipped.stdout
        await env.wait_caught_up()
    finally:
        await env.as_owner("order_history", _UNJAM)
    assert (await read_model_snapshot(await env.pool("order_history"))).goods == {1: (1, "a"), 3: (1, "b")}
    [parked] = await _dead_letters(env)
    assert (parked["topic"], parked["partition"], parked["offset"]) == (topic, partition, end)
    assert parked["parked"] is True and parked["reason"] == "skipped by an operator: t"
    assert parked["value_sha256"] == hashlib.sha256(jam.to_json()).digest()
    assert _stuck_seconds(topic, partition) == 0
    again = await command(env, "order_history", "dlq", "skip", topic, str(partition), str(end))
    assert again.returncode == 1 and "holds nothing" in again.stderr


async def test_a_record_the_kafka_client_cannot_read_is_parked_and_its_neighbours_applied(env: Env) -> None:
    """A header key that is not UTF-8: the broker takes it, aiokafka cannot read its batch.

    aiokafka drops the records of other partitions it read in the same fetch, yet moves
    their positions past them: none of them may be lost either.
    """
    first, unreadable, last = order_created(1, 7), order_created(2, 8), order_created(3, 9)
    elsewhere = [goods_event(gid, 1, 1) for gid in range(1, 13)]  # goods on every partition, read in one fetch
    with raw_header_keys():
        producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
        await producer.start()
        try:
            for event in elsewhere:
                await producer.send_and_wait(env.topic(GOODS), event.to_json(), key=event.key)
            for event, headers in ((first, []), (unreadable, [(RawKey(b"\xff\xfe"), b"x")]), (last, [])):
                await producer.send_and_wait(env.topic(ORDER), event.to_json(), key=b"1", headers=headers)
        finally:
            await producer.stop()
    await env.start_consumer()
    await env.wait_caught_up()
    expected = ExpectedModel()
    for event in (first, last, *elsewhere):
        expected.apply(event)
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    [parked] = await _dead_letters(env)
    assert parked["parked"] is True and parked["offset"] == 1
    assert "UnicodeDecodeError" in str(parked["reason"]) and "unreadable" in str(parked["parked_reason"])


def _freshness() -> float | None:
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if family.name == "read_model_freshness_seconds":
            return max((float(s.value) for s in family.samples), default=None)
    return None


async def test_an_event_from_the_far_future_does_not_pin_freshness(env: Env) -> None:
    """occurred_at in the year 9999 counts as applied when it was: freshness grows from then, so the
    staleness alert can still fire."""
    raw = orjson.loads(order_created(1, 7).to_json())
    raw["occurred_at"] = "9999-12-31T23:59:59.999999+00:00"
    await env.produce([(ORDER, b"1", orjson.dumps(raw))])
    consumer = await env.start_consumer()
    await env.wait_caught_up()
    assert consumer.newest_applied is not None and consumer.newest_applied.year == dt.datetime.now(dt.UTC).year

    async def ageing() -> bool:
        fresh = _freshness()
        return fresh is not None and fresh >= 1.0

    await wait_until(ageing, 30, "read_model_freshness_seconds to grow past 1 s")
