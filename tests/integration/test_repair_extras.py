"""`reconcile --repair` against rows the read model has and the command databases do not.

Two ways such rows come about, and what the repair does with each
(docs/commands.md, "reconcile"; docs/operations.md):

- events of another producer, for ids at or below a command sequence that the
  service never wrote (an insert that rolled back still used its id): the id
  can never be handed out again, so the row is deleted for good;
- a command database restored from a backup, which lost its latest rows (and
  another producer's ids beyond the sequence): the sequence will hand those
  ids out again. The row is removed at the version it had, and the service
  starts the entity it later creates with that id one version above, so that
  entity appears while no copy of the removed row's events can come back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from shared.events import GONE_VERSION, MAX_VERSION
from tests.harness import GOODS, ORDER, Env, command
from tests.readmodel import command_snapshot, encode, goods_event, order_created, read_model_snapshot


async def _agree(env: Env) -> None:
    expected = await command_snapshot(await env.pool("order"), await env.pool("goods"))
    assert await read_model_snapshot(await env.pool("order_history")) == expected


async def _reconcile(env: Env, *args: str) -> tuple[int, Any]:
    result = await command(env, "order_history", "reconcile", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


async def _versions(env: Env, table: str) -> dict[int, tuple[int, bool]]:
    history = await env.pool("order_history")
    return {
        r["id"]: (r["version"], r["deleted"]) for r in await history.fetch(f"SELECT id, version, deleted FROM {table}")
    }


def _of(records: list[ConsumerRecord], ids: set[int]) -> list[tuple[str, bytes, bytes]]:
    """The records of these aggregates, as (contract topic, key, value) to send again."""
    out = []
    for record in records:
        event = orjson.loads(record.value)
        if event["aggregate_id"] in ids:
            topic = ORDER if event["event_type"].startswith("order.") else GOODS
            out.append((topic, record.key, record.value))
    return out


async def test_repair_removes_extra_rows_below_and_beyond_the_sequences_without_waiting(env: Env) -> None:
    await env.start_pipeline()
    order_db, goods_db = await env.pool("order"), await env.pool("goods")
    async with env.client("order") as orders, env.client("goods") as goods:
        order_ids = [(await orders.post("/v1/order", json={"user_id": 10 + i})).json()["id"] for i in range(4)]
        for i in range(6):
            assert (
                await goods.post("/v1/goods", json={"order_id": order_ids[i % 4], "name": f"g{i}"})
            ).status_code == 201
        # Inserts that rolled back: their ids are below the sequences and in no table.
        order_gap = await order_db.fetchval("SELECT nextval('orders_id_seq')")
        goods_gap = await goods_db.fetchval("SELECT nextval('goods_id_seq')")
        # The backup is taken here: what follows is lost by the restore.
        order_seq = await order_db.fetchval("SELECT last_value FROM orders_id_seq")
        goods_seq = await goods_db.fetchval("SELECT last_value FROM goods_id_seq")
        lost_orders = [(await orders.post("/v1/order", json={"user_id": 50 + i})).json()["id"] for i in range(2)]
        assert (await orders.patch(f"/v1/order/{lost_orders[0]}", json={"user_id": 60})).status_code == 200
        lost_goods = []
        for order_id in (lost_orders[0], lost_orders[1], order_ids[0]):
            created = await goods.post("/v1/goods", json={"order_id": order_id, "name": "lost"})
            lost_goods.append(created.json()["id"])
        for _ in range(2):
            assert (await goods.patch(f"/v1/goods/{lost_goods[2]}", json={"name": "lost, renamed"})).status_code == 200
    await env.settle()
    # What the topics hold of the lost rows: sent again at the end, as late copies.
    copies = _of(await env.read_topic(ORDER), {*lost_orders}) + _of(await env.read_topic(GOODS), {*lost_goods})
    assert len(copies) == 2 + 1 + 3 + 2
    await env.as_owner(
        "order", f"DELETE FROM orders WHERE id > {order_seq}; SELECT setval('orders_id_seq', {order_seq})"
    )
    await env.as_owner("goods", f"DELETE FROM goods WHERE id > {goods_seq}; SELECT setval('goods_id_seq', {goods_seq})")

    # Another producer's events: ids below the sequences (the gaps) and beyond them.
    beyond_order, beyond_goods = order_seq + 40, goods_seq + 40
    stray = [
        order_created(order_gap, 901, 1),
        order_created(order_gap, 901, 2),
        order_created(beyond_order, 902, 1),
        order_created(beyond_order, 902, 2),
        order_created(beyond_order, 902, 3),
        goods_event(goods_gap, 1, order_ids[1], "stray below"),
        goods_event(beyond_goods, 1, order_ids[2], "stray beyond"),
        goods_event(beyond_goods, 2, order_ids[2], "stray beyond, renamed"),
        goods_event(beyond_goods + 1, 1, beyond_order, "on a stray order"),
    ]
    await env.produce(encode(stray))
    await env.wait_caught_up()
    before = {r: await _versions(env, r) for r in ("orders", "goods")}

    status, report = await _reconcile(env)
    assert status == 1
    extra = {(d["entity"], d["id"]) for d in report["differences"] if d["field"] == "exists" and d["command"] == "no"}
    assert extra == {
        ("order", order_gap),
        ("order", beyond_order),
        *(("order", oid) for oid in lost_orders),
        ("goods", goods_gap),
        ("goods", beyond_goods),
        ("goods", beyond_goods + 1),
        *(("goods", gid) for gid in lost_goods),
    }

    started = time.monotonic()
    status, report = await _reconcile(env, "--repair", "--repair-timeout", "90")
    took = time.monotonic() - started
    assert status == 0, report
    assert report["differences"] == [] and report["repair"]["not_repaired"] == []
    # Far below the timeout: nothing it waited for failed to come.
    assert took < 45, f"the repair took {took:.1f} s"
    await _agree(env)

    # Below a sequence: deleted for good. Beyond it: deleted at the highest version the read
    # model held among the rows removed (here the other producer's third version of each).
    after = {r: await _versions(env, r) for r in ("orders", "goods")}
    assert after["orders"][order_gap] == (GONE_VERSION, True)
    assert after["goods"][goods_gap] == (GONE_VERSION, True)
    removed = {"orders": [beyond_order, *lost_orders], "goods": [beyond_goods, beyond_goods + 1, *lost_goods]}
    for table, ids in removed.items():
        highest = max(before[table][i][0] for i in ids)
        assert highest == 3
        assert {i: after[table][i] for i in ids} == {i: (highest, True) for i in ids}

    # The restored services hand the lost ids out again: the new entities appear, their versions
    # one above the removed rows', and their later changes apply too.
    async with env.client("order") as orders, env.client("goods") as goods:
        again = [(await orders.post("/v1/order", json={"user_id": 70 + i})).json() for i in range(2)]
        assert [o["id"] for o in again] == lost_orders
        assert [o["version"] for o in again] == [4, 4]
        goods_again = []
        for name in ("new 1", "new 2", "new 3"):
            goods_again.append((await goods.post("/v1/goods", json={"order_id": lost_orders[1], "name": name})).json())
        assert [g["id"] for g in goods_again] == lost_goods
        assert [g["version"] for g in goods_again] == [4, 4, 4]
        assert (await goods.patch(f"/v1/goods/{lost_goods[2]}", json={"name": "new 3, renamed"})).status_code == 200
    await env.settle()
    await _agree(env)
    history = await env.pool("order_history")
    assert await history.fetchval("SELECT user_id FROM orders WHERE id = $1", lost_orders[1]) == 71
    assert await history.fetchval("SELECT goods_count FROM orders WHERE id = $1", lost_orders[1]) == 3
    assert await history.fetchval("SELECT name FROM goods WHERE id = $1", lost_goods[2]) == "new 3, renamed"

    # Late copies of every removed row's events (the lost rows' from the topics, the other
    # producer's again): none brings a removed row back or overwrites a new entity.
    await env.produce([*copies, *encode(stray)])
    await env.wait_caught_up()
    await _agree(env)
    status, report = await _reconcile(env)
    assert status == 0, report


async def test_repair_does_not_wait_for_snapshots_that_cannot_apply(env: Env) -> None:
    """Rows no resync can fix: the repair says so at once instead of waiting out its timeout."""
    await env.start_pipeline()
    async with env.client("order") as orders:
        order_id = (await orders.post("/v1/order", json={"user_id": 1})).json()["id"]
    await env.settle()
    # Another producer's newer version of an order the service has at version 1: the service's
    # snapshot (version 1) cannot overwrite it. And a row at the highest version there is, beyond
    # the sequence: no version is left to start the service's entity above it, so it is not removed.
    beyond = order_id + 10
    await env.produce(
        encode(
            [order_created(order_id, 666, 5), order_created(beyond, 667, 1), order_created(beyond, 667, MAX_VERSION)]
        )
    )
    await env.wait_caught_up()

    started = time.monotonic()
    status, report = await _reconcile(env, "--repair", "--repair-timeout", "90")
    took = time.monotonic() - started
    assert status == 1
    left = {(d["id"], d["field"], d["command"], d["read"]) for d in report["repair"]["not_repaired"]}
    assert left == {(order_id, "user_id", "1", "666"), (beyond, "exists", "no", "yes")}
    assert {(d["id"], d["field"]) for d in report["differences"]} == {(order_id, "user_id"), (beyond, "exists")}
    assert took < 45, f"the repair took {took:.1f} s"
    assert await (await env.pool("order")).fetchval("SELECT count(*) FROM version_floors") == 0
