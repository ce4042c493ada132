"""A goods field end to end: `price_cents` through the API, the v2 event, the read model, resync and reconcile.

It was added as a newcomer would add one (docs/architecture.md, "Add a field to
goods"): these tests are what such a field must pass.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tests.harness import GOODS, Env, command
from tests.readmodel import goods_event, order_created


async def _detail_goods(env: Env, order_id: int) -> list[dict[str, Any]]:
    async with env.client("order_history") as history:
        answer = await history.get(f"/v1/order-history/{order_id}")
    assert answer.status_code == 200, answer.text
    goods: list[dict[str, Any]] = answer.json()["goods"]
    return goods


async def test_a_price_goes_from_the_goods_api_to_the_order_history_detail(env: Env) -> None:
    await env.start_pipeline()
    async with env.client("order") as orders, env.client("goods") as goods:
        order_id = (await orders.post("/v1/order", json={"user_id": 7})).json()["id"]
        priced = await goods.post("/v1/goods", json={"order_id": order_id, "name": "lamp", "price_cents": 1999})
        assert priced.status_code == 201 and priced.json()["price_cents"] == 1999
        unpriced = (await goods.post("/v1/goods", json={"order_id": order_id})).json()
        assert unpriced["price_cents"] is None
        assert (await goods.post("/v1/goods", json={"order_id": order_id, "price_cents": -1})).status_code == 422
        assert (await goods.post("/v1/goods", json={"order_id": order_id, "price_cents": "3"})).status_code == 422
        await env.settle()
        assert [(g["name"], g["price_cents"]) for g in await _detail_goods(env, order_id)] == [
            ("lamp", 1999),
            (None, None),
        ]
        # A change of the price alone; then its removal; the name stays.
        changed = await goods.patch(f"/v1/goods/{priced.json()['id']}", json={"price_cents": 2499})
        assert changed.status_code == 200 and changed.json()["name"] == "lamp" and changed.json()["version"] == 2
        await env.settle()
        assert (await _detail_goods(env, order_id))[0]["price_cents"] == 2499
        cleared = await goods.patch(f"/v1/goods/{priced.json()['id']}", json={"price_cents": None})
        assert cleared.json()["price_cents"] is None and cleared.json()["name"] == "lamp"
        await env.settle()
        assert (await _detail_goods(env, order_id))[0]["price_cents"] is None
    events = await env.read_topic(GOODS)  # settled: every event is on the topic
    assert len(events) == 4 and {orjson.loads(m.value)["schema_version"] for m in events} == {2}


async def test_a_version_1_goods_event_is_lifted_and_applied_without_a_price(env: Env) -> None:
    """Events of the release before `price_cents` (schema_version 1) still apply."""
    old = orjson.loads(goods_event(1, 1, 1, "lamp").to_json())
    old["schema_version"] = 1
    del old["data"]["price_cents"]
    await env.produce([("order.events", b"1", order_created(1, 7).to_json()), (GOODS, b"1", orjson.dumps(old))])
    await env.start_consumer()
    await env.wait_caught_up()
    assert await _detail_goods(env, 1) == [
        {"id": 1, "name": "lamp", "price_cents": None, "created_at": "2026-11-22T00:00:00Z"}
    ]


async def test_reconcile_compares_the_price_and_repair_restores_it(env: Env) -> None:
    await env.start_pipeline()
    async with env.client("order") as orders, env.client("goods") as goods:
        order_id = (await orders.post("/v1/order", json={"user_id": 7})).json()["id"]
        goods_id = (await goods.post("/v1/goods", json={"order_id": order_id, "price_cents": 500})).json()["id"]
    await env.settle()
    await env.as_owner("order_history", f"UPDATE goods SET price_cents = 1 WHERE id = {goods_id}")
    found = await command(env, "order_history", "reconcile", "--json")
    assert found.returncode == 1, found.stderr
    differences = json.loads(found.stdout)["differences"]
    assert differences == [{"entity": "goods", "id": goods_id, "field": "price_cents", "command": "500", "read": "1"}]
    repaired = await command(env, "order_history", "reconcile", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (await _detail_goods(env, order_id))[0]["price_cents"] == 500
