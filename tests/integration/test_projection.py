"""Events injected straight into the topics: the read model stays exact.

Real Kafka, real PostgreSQL, the real consumer (in-process).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid

import asyncpg
import orjson
from aiokafka import ConsumerRecord, TopicPartition

from order_history.projection.apply import Applied, Part
from order_history.projection.statements import apply_batch, prepare, reduce_events
from shared.events import Event, GoodsData, OrderData, new_event
from tests.harness import GOODS, ORDER, Env
from tests.readmodel import (
    ExpectedModel,
    encode,
    goods_deleted,
    goods_event,
    order_created,
    order_deleted,
    random_stream,
    read_model_snapshot,
    recount_mismatches,
)


async def history_list(env: Env, threshold: int = 0, limit: int = 1000, offset: int = 0) -> list[dict[str, object]]:
    async with env.client("order_history") as client:
        response = await client.get(
            "/v1/order-history", params={"threshold": threshold, "limit": limit, "offset": offset}
        )
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


async def test_goods_before_their_order_count_once_it_arrives(env: Env) -> None:
    await env.start_consumer()
    await env.produce(encode([goods_event(1, 1, 10), goods_event(2, 1, 10), goods_event(3, 1, 11)]))
    await env.wait_caught_up()
    assert await history_list(env) == []  # order 10 not heard of yet: not listed
    await env.produce(encode([order_created(10, 5)]))
    await env.wait_caught_up()
    listed = await history_list(env)
    assert [(o["id"], o["user_id"], o["goods_count"]) for o in listed] == [(10, 5, 2)]
    async with env.client("order_history") as client:
        detail = (await client.get("/v1/order-history/10")).json()
        assert [g["id"] for g in detail["goods"]] == [1, 2]
        assert (await client.get("/v1/order-history/11")).status_code == 404


async def test_every_event_twice_changes_nothing(env: Env) -> None:
    events = list(random_stream(random.Random(7), 600, 40))
    expected = ExpectedModel()
    for e in events:
        expected.apply(e)
    await env.start_consumer(batch_max_records=50)
    once = encode(events)
    await env.produce(once)
    await env.wait_caught_up()
    # The same events again (same event_id, same versions), newest first, so that
    # every entity's older versions arrive after its newest one.
    await env.produce(list(reversed(once)))
    await env.wait_caught_up()
    history = await env.pool("order_history")
    assert await read_model_snapshot(history) == expected.snapshot()
    assert await recount_mismatches(history) == 0
    # A goods.created seen again is skipped, not refused (the one-statement path
    # inserts created goods without ON CONFLICT, and falls back to upserts).
    assert await history.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_out_of_order_versions_and_a_late_update_after_delete(env: Env) -> None:
    await env.start_consumer()
    # Each phase is applied before the next is sent, so no batch can hide the order.
    phases = [
        [order_created(1, 1), order_created(2, 2), goods_event(5, 2, 2, "v2"), goods_event(6, 1, 1, "a")],
        [goods_event(5, 1, 1, "v1"), goods_deleted(6, 3, 1), order_created(3, 3), order_deleted(3, 3)],
        # An old update after the delete: no resurrection; an order update older than its delete.
        [goods_event(6, 2, 2, "late"), order_created(3, 9, version=2), goods_event(7, 1, 3)],
    ]
    for phase in phases:
        await env.produce(encode(phase))
        await env.wait_caught_up()
    snapshot = await read_model_snapshot(await env.pool("order_history"))
    assert snapshot.goods == {5: (2, "v2"), 7: (3, None)}
    assert snapshot.orders == {1: (1, 0), 2: (2, 1)}
    assert [o["id"] for o in await history_list(env)] == [2]


async def test_moves_and_deletes_keep_counts_exact(env: Env) -> None:
    await env.start_consumer()
    stream = [order_created(1, 1), order_created(2, 1)]
    stream += [goods_event(g, 1, 1) for g in range(1, 6)]
    stream += [goods_event(1, 2, 2), goods_event(2, 2, 2), goods_deleted(3, 2, 1), goods_event(1, 3, 1)]
    await env.produce(encode(stream))
    await env.wait_caught_up()
    counts = {o["id"]: o["goods_count"] for o in await history_list(env)}
    assert counts == {1: 3, 2: 1}
    assert [o["id"] for o in await history_list(env, threshold=1)] == [1]
    assert await history_list(env, threshold=3) == []


async def test_poison_goes_to_the_dlq_with_a_reason_and_the_consumer_goes_on(env: Env) -> None:
    good = order_created(1, 1)
    envelope = orjson.loads(good.to_json())
    poison: list[tuple[str, bytes | None, bytes | None]] = [
        (ORDER, b"1", b"{not json"),
        (ORDER, b"1", orjson.dumps({**envelope, "event_id": str(uuid.uuid4()), "event_type": "order.teleported"})),
        (ORDER, b"1", orjson.dumps({**envelope, "event_id": str(uuid.uuid4()), "schema_version": 99})),
        (ORDER, b"1", orjson.dumps({**envelope, "data": {"id": 1, "user_id": "one"}})),
        (GOODS, b"1", good.to_json()),  # an order event on the goods topic
    ]
    await env.start_consumer()
    await env.produce([*poison, *encode([good, goods_event(1, 1, 1)])])
    await env.wait_caught_up()

    assert [(o["id"], o["goods_count"]) for o in await history_list(env)] == [(1, 1)]
    history = await env.pool("order_history")
    assert await history.fetchval("SELECT count(*) FROM dead_letters") == len(poison)

    dlq: list[tuple[str, dict[str, bytes], bytes | None]] = []
    for contract in (ORDER, GOODS):
        for m in await env.read_topic(f"{contract}.dlq"):
            dlq.append((contract, dict(m.headers), m.value))
    reasons = sorted(h["dlq.reason"].decode() for _, h, _ in dlq)
    assert len(dlq) == len(poison)
    assert any("not valid JSON" in r for r in reasons)
    assert any("event_type" in r for r in reasons)
    assert any("unknown schema_version 99" in r for r in reasons)
    assert any("user_id" in r for r in reasons)
    assert any("does not belong on topic goods.events" in r for r in reasons)
    for contract, headers, value in dlq:
        assert headers["dlq.original.topic"].decode() == env.topic(contract)
        assert int(headers["dlq.original.offset"]) >= 0
        assert value in {p[2] for p in poison}


async def test_positions_advance_in_the_same_transaction_and_resume_after_restart(env: Env) -> None:
    """A stopped consumer leaves positions and read model agreeing; a new one resumes there."""
    events = list(random_stream(random.Random(3), 400, 30))
    expected = ExpectedModel()
    for e in events:
        expected.apply(e)
    consumer = await env.start_consumer(batch_max_records=37)
    await env.produce(encode(events[:200]))
    await env.wait_caught_up()
    await consumer.stop()
    before = await env.positions()
    await env.produce(encode(events[200:]))
    await env.start_consumer(batch_max_records=37, apply_connections=1)  # one transaction per batch
    await env.wait_caught_up()
    assert sum((await env.positions()).values()) == len(events) > sum(before.values())
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()


async def test_rebuild_from_scratch_equals_the_first_build(env: Env) -> None:
    events = list(random_stream(random.Random(11), 500, 30))
    await env.produce(encode(events))
    consumer = await env.start_consumer()
    await env.wait_caught_up()
    history = await env.pool("order_history")
    first = await read_model_snapshot(history)
    await consumer.stop()
    await env.as_owner("order_history", "TRUNCATE orders, goods, consumer_positions, dead_letters")
    await env.start_consumer()
    await env.wait_caught_up()
    assert await read_model_snapshot(history) == first
    assert first.orders  # the stream really built something


async def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_applied(env: Env) -> None:
    """A valid-looking event that the database cannot store does not stop the consumer."""
    history = await env.pool("order_history")
    await env.as_owner(
        "order_history", "ALTER TABLE goods ADD CONSTRAINT test_refuse CHECK (name IS DISTINCT FROM 'refuse-me')"
    )
    try:
        await env.start_consumer()
        stream = [
            order_created(1, 1),
            goods_event(1, 1, 1, "ok"),
            goods_event(2, 1, 1, "refuse-me"),
            goods_event(3, 1, 1),
        ]
        await env.produce(encode(stream))
        await env.wait_caught_up()
        snapshot = await read_model_snapshot(history)
        assert snapshot.goods == {1: (1, "ok"), 3: (1, None)}
        assert snapshot.orders == {1: (1, 2)}
        dlq = await env.read_topic(f"{GOODS}.dlq", expect=1)
        assert len(dlq) == 1
        assert b"database refused the event" in dict(dlq[0].headers)["dlq.reason"]
        assert await history.fetchval("SELECT count(*) FROM dead_letters") == 1
    finally:
        await env.as_owner("order_history", "ALTER TABLE goods DROP CONSTRAINT IF EXISTS test_refuse")


async def test_a_database_outage_is_waited_out_and_nothing_is_skipped(env: Env) -> None:
    """The read database refuses connections for a while: the consumer retries, loses nothing."""
    events = list(random_stream(random.Random(21), 900, 40))
    expected = ExpectedModel()
    for e in events:
        expected.apply(e)
    consumer = await env.start_consumer(batch_max_records=60, consumer_max_backoff=0.5)
    await env.produce(encode(events[:300]))
    await env.wait_caught_up()

    admin = await asyncpg.connect(env.stack.postgres.dsn("order_history"))
    try:
        await admin.execute("ALTER ROLE order_history_svc NOLOGIN")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'order_history_svc'"
        )
        await env.produce(encode(events[300:]))  # arrives while the database is unreachable
        await asyncio.sleep(3.0)
        assert consumer.total.events < len(events)  # it could not apply the rest yet
    finally:
        await admin.execute("ALTER ROLE order_history_svc LOGIN")
        await admin.close()
    for pool in env.pools.values():
        pool.terminate()
    env.pools.clear()
    await env.wait_caught_up(timeout=60)
    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    assert await recount_mismatches(await env.pool("order_history")) == 0


async def test_a_part_applied_before_is_refused_by_the_one_statement_path_and_skipped(env: Env) -> None:
    """The one-round-trip statement applies a part only if none of it was applied before;
    otherwise it changes nothing, and `process` skips what the positions say is applied."""
    events = list(random_stream(random.Random(5), 300, 20))
    await env.produce(encode(events))
    consumer = await env.start_consumer()
    await env.wait_caught_up()
    history = await env.pool("order_history")
    model, positions = await read_model_snapshot(history), await env.positions()
    goods = await env.read_topic(GOODS, expect=sum(e.topic == GOODS for e in events))
    records: dict[TopicPartition, list[ConsumerRecord]] = {}
    for message in goods:
        records.setdefault(TopicPartition(message.topic, message.partition), []).append(message)
    decoded = consumer.decode(records)
    valid = [e for outcomes in decoded.values() for e in outcomes if isinstance(e, Event)]
    again = Part(records, decoded, prepare(reduce_events(valid)), Applied.of(valid), resynced=False)
    assert len(again.prepared) > 0

    assert consumer.applier is not None
    assert await consumer.applier.fast(again) is None
    stats = await consumer.applier.apply(again)

    assert (stats.events, stats.skipped_seen, stats.applied) == (len(goods), len(goods), 0)
    assert await read_model_snapshot(history) == model
    assert await env.positions() == positions


async def test_timestamps_are_stored_to_the_microsecond_from_year_1_to_9999(env: Env) -> None:
    """The batch statement carries timestamps as microseconds since 1970: every one comes back exactly,
    whatever its offset. (A naive one never gets this far: events refuse it, test_events.py.)"""
    utc, plus2 = dt.UTC, dt.timezone(dt.timedelta(hours=2))
    moments = [
        dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=utc),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=utc),
        dt.datetime(1970, 1, 1, tzinfo=utc),
        dt.datetime(2026, 11, 22, 23, 1, 2, 345678, tzinfo=plus2),
        dt.datetime(2300, 6, 1, 12, 0, 0, 999999, tzinfo=utc),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=utc),
    ]
    events = []
    for i, moment in enumerate(moments, start=1):
        order = OrderData(id=i, user_id=1, created_at=moment, updated_at=moment)
        events.append(new_event("order.created", i, 1, order))
        data = GoodsData(id=i, order_id=i, name=None, created_at=moment, updated_at=moment)
        events.append(new_event("goods.created", i, 1, data))
    history = await env.pool("order_history")
    async with history.acquire() as conn, conn.transaction():
        await apply_batch(conn, reduce_events(events))
    for table in ("orders", "goods"):
        rows = await history.fetch(f"SELECT id, created_at, updated_at FROM {table} ORDER BY id")
        assert [r["created_at"] for r in rows] == moments, table
        assert [r["updated_at"] for r in rows] == moments, table
