"""Hostile events injected into the topics: each goes to the DLQ with a reason, the consumer goes
on, the read model is exactly what the valid events make it, and no GET answers 5xx."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson

from tests.harness import GOODS, ORDER, Env
from tests.readmodel import ExpectedModel, encode, goods_event, order_created, read_model_snapshot


def _variant(event: bytes, **changes: Any) -> bytes:
    raw = orjson.loads(event)
    raw["event_id"] = str(uuid.uuid4())
    data = changes.pop("data", None)
    raw.update(changes)
    if data is not None:
        raw["data"] = {**raw["data"], **data}
    return json.dumps(raw).encode()  # the standard library writes integers of any size


def hostile() -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(topic, key, value, a word the DLQ reason must contain)."""
    order = order_created(1, 7).to_json()
    goods = goods_event(1, 1, 1, "lamp").to_json()
    missing = orjson.loads(order)
    del missing["aggregate_version"]
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        (ORDER, b"1", None, "tombstone"),
        (ORDER, b"1", b"\xff\xfe not utf-8", "JSON"),
        (ORDER, b"1", deep, "JSON"),
        (ORDER, b"1", orjson.dumps(missing), "aggregate_version"),
        (ORDER, b"1", _variant(order, aggregate_version="3"), "aggregate_version"),
        (ORDER, b"1", _variant(order, aggregate_version=0), "aggregate_version"),
        (ORDER, b"1", _variant(order, aggregate_version=2**31), "aggregate_version"),
        (ORDER, b"1", _variant(order, aggregate_id=-1), "aggregate_id"),
        (ORDER, b"1", _variant(order, aggregate_id=2**63), "aggregate_id"),
        (ORDER, b"1", _variant(order, schema_version=10**30), "schema_version"),
        (ORDER, b"1", _variant(order, event_type="order.exploded"), "event_type"),
        (ORDER, b"1", _variant(order, data={"user_id": None}), "user_id"),
        (ORDER, b"1", _variant(order, data={"id": 2}), "differs from aggregate_id"),
        # Valid RFC 3339, but year 10000 (and year 0) once in UTC: storable, not showable.
        (ORDER, b"1", _variant(order, data={"created_at": "9999-12-31T23:00:00-02:00"}), "created_at"),
        (ORDER, b"1", _variant(order, data={"updated_at": "0001-01-01T00:30:00+01:00"}), "updated_at"),
        (ORDER, b"1", _variant(order, occurred_at="9999-12-31T23:59:59-00:01"), "occurred_at"),
        (ORDER, b"1", _variant(order, data={"created_at": "yesterday"}), "created_at"),
        (GOODS, b"1", _variant(goods, data={"name": "a\u0000b"}), "NUL"),
        (GOODS, b"1", _variant(goods, data={"name": "x" * 900_000}), "name"),
        (GOODS, b"1", _variant(goods, data={"order_id": "1"}), "order_id"),
        (GOODS, b"1", _variant(goods, data={"order_id": 0}), "order_id"),
        (GOODS, b"1", order, "does not belong on topic"),
    ]


async def test_hostile_events_are_dead_lettered_and_change_nothing(env: Env) -> None:
    good = [order_created(1, 7), goods_event(1, 1, 1, "lamp"), order_created(2, 8), goods_event(2, 1, 2)]
    expected = ExpectedModel()
    for event in good:
        expected.apply(event)
    poison = hostile()
    await env.start_consumer()
    # The valid events before, between and after the hostile ones.
    messages = [*encode(good[:2]), *[(t, k, v) for t, k, v, _ in poison], *encode(good[2:])]
    await env.produce(messages)
    await env.wait_caught_up()

    assert await read_model_snapshot(await env.pool("order_history")) == expected.snapshot()
    dlq = [m for contract in (ORDER, GOODS) for m in await env.read_topic(f"{contract}.dlq", expect=None)]
    assert len(dlq) == len(poison)
    by_value = {m.value: dict(m.headers)["dlq.reason"].decode() for m in dlq}
    for topic, _, value, word in poison:
        assert word in by_value[value], (topic, (value or b"")[:80], by_value[value])
    history = await env.pool("order_history")
    assert await history.fetchval("SELECT count(*) FROM dead_letters") == len(poison)

    async with env.client("order_history") as client:
        for order_id in (1, 2):
            assert (await client.get(f"/v1/order-history/{order_id}")).status_code == 200
        listed = await client.get("/v1/order-history", params={"threshold": 0})
        assert listed.status_code == 200
        assert [o["id"] for o in listed.json()["data"]] == [1, 2]
