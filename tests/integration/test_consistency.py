"""Read your own writes: every write answers a Consistency-Token, and a read that carries it waits for it.

The command APIs, relays, consumer and the order-history API run in-process
against the test's real PostgreSQL and Kafka. No read is delayed by a sleep:
each is sent right after its write's answer.
"""

from __future__ import annotations

import asyncio

import httpx

from shared import consistency
from shared.consistency import Token
from tests.harness import Env, wait_until

H = consistency.HEADER


def _token(response: httpx.Response) -> str:
    value = response.headers[H]
    assert len(consistency.parse(value)) == 1
    return value


def _waiting(tokens: str) -> dict[str, str]:
    """The headers of a read that must see `tokens`: the longest wait, so that a slow machine
    answers late rather than 412."""
    return {H: tokens, "Prefer": "wait=10"}


async def test_every_write_names_itself_and_the_version_it_made(env: Env) -> None:
    async with env.client("order") as orders, env.client("goods") as goods:
        created = await orders.post("/v1/order", json={"user_id": 4})
        oid = created.json()["id"]
        assert consistency.parse(_token(created)) == [Token("order", oid, 1)]
        changed = await orders.patch(f"/v1/order/{oid}", json={"user_id": 5})
        assert consistency.parse(_token(changed)) == [Token("order", oid, 2)]
        gone = await orders.delete(f"/v1/order/{oid}")
        assert gone.status_code == 204 and consistency.parse(_token(gone)) == [Token("order", oid, 3)]
        item = await goods.post("/v1/goods", json={"order_id": oid})
        gid = item.json()["id"]
        assert consistency.parse(_token(item)) == [Token("goods", gid, 1)]
        refused = await goods.patch(f"/v1/goods/{gid}", json={"order_id": 0})
        assert refused.status_code == 422 and H not in refused.headers


async def test_a_read_right_after_each_write_sees_it(env: Env) -> None:
    await env.start_pipeline()
    async with env.client("order") as orders, env.client("goods") as goods, env.client("order_history") as history:
        for i in range(40):
            created = await orders.post("/v1/order", json={"user_id": 100 + i})
            oid = created.json()["id"]
            seen = await history.get(f"/v1/order-history/{oid}", headers=_waiting(_token(created)))
            assert seen.status_code == 200, seen.text
            assert seen.json()["user_id"] == 100 + i

            added = await goods.post("/v1/goods", json={"order_id": oid, "name": f"g{i}"})
            gid = added.json()["id"]
            seen = await history.get(f"/v1/order-history/{oid}", headers=_waiting(_token(added)))
            assert [g["id"] for g in seen.json()["goods"]] == [gid] and seen.json()["goods_count"] == 1

            other = (await orders.post("/v1/order", json={"user_id": 1})).json()["id"]
            moved = await goods.patch(f"/v1/goods/{gid}", json={"order_id": other})
            # Two tokens in one header: the move and the other order's creation.
            both = f"{_token(moved)}, o{other:x}.1"
            seen = await history.get(f"/v1/order-history/{other}", headers=_waiting(both))
            assert [g["id"] for g in seen.json()["goods"]] == [gid]
            before = await history.get(f"/v1/order-history/{oid}", headers=_waiting(_token(moved)))
            assert before.json()["goods"] == [] and before.json()["goods_count"] == 0

            listed = await history.get(
                "/v1/order-history", params={"threshold": 0, "limit": 1000}, headers=_waiting(_token(moved))
            )
            assert other in [o["id"] for o in listed.json()["data"]]
            if i % 4 == 0:
                removed = await goods.delete(f"/v1/goods/{gid}")
                seen = await history.get(f"/v1/order-history/{other}", headers=_waiting(_token(removed)))
                assert seen.json()["goods"] == []
                deleted = await orders.delete(f"/v1/order/{oid}")
                seen = await history.get(f"/v1/order-history/{oid}", headers=_waiting(_token(deleted)))
                assert seen.status_code == 404  # the delete is reflected: the order is gone


async def test_a_read_waits_until_the_consumer_applies_the_write(env: Env) -> None:
    env.start_relay("order")
    history_db = await env.pool("order_history")
    async with env.client("order") as orders, env.client("order_history") as history:
        created = await orders.post("/v1/order", json={"user_id": 9})
        oid = created.json()["id"]
        # The consumer's transaction waits behind a lock this test holds on the read model's orders:
        # the read below is sent while the write cannot be reflected, and must wait for it.
        async with history_db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE orders IN SHARE MODE")
            await env.start_consumer()

            async def consumer_blocked() -> bool:
                found = await history_db.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'order-history-consumer' AND wait_event_type = 'Lock'"""
                )
                return bool(found)

            await wait_until(consumer_blocked, 60, "the consumer to wait for the read model's lock")
            read = asyncio.create_task(history.get(f"/v1/order-history/{oid}", headers=_waiting(_token(created))))
            await asyncio.sleep(0.1)
            assert not read.done()
        seen = await read
        assert seen.status_code == 200 and seen.json()["user_id"] == 9


async def test_a_write_not_reflected_in_time_is_a_412_naming_it_and_a_bad_token_a_400(env: Env) -> None:
    async with env.client("order_history") as history:
        never = f"o{10**12:x}.1"
        late = await history.get("/v1/order-history", headers={H: f"{never},g1.1", "Prefer": "wait=1"})
        assert late.status_code == 412
        assert late.headers["Retry-After"] == "1"
        body = late.json()
        assert body["error"] == "not_yet_consistent" and sorted(body["pending"]) == sorted([never, "g1.1"])
        at_once = await history.get("/v1/order-history/1", headers={H: never, "Prefer": "wait=0"})
        assert at_once.status_code == 412
        for bad in ("o0.1", "x1.1", "o1.1,", "o1.80000000", "o1.1;o2.2", "o1.1" + ",o1.1" * 100):
            refused = await history.get("/v1/order-history", headers={H: bad})
            assert refused.status_code == 400, bad
            assert refused.json()["fields"][0]["field"] == H
        plain = await history.get("/v1/order-history")
        assert plain.status_code == 200
