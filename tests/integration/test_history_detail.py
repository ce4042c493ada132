"""GET /v1/order-history/{order_id}: the order, its goods count, and its goods a page at a time.

The read model is filled directly: one order with many live goods among deleted
ones and among the goods of other orders, with ids that are not consecutive.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import httpx
import pytest

from order_history.api import queries
from tests.harness import Env

ORDER = 7
LIVE = 250
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def filled(env: Env) -> tuple[Env, list[int]]:
    """Order 7 with LIVE live goods (their ids returned, ascending), deleted goods and order 8's goods between them."""
    rng = random.Random(5)
    ids = rng.sample(range(1, 10_000), LIVE + 100)
    live = sorted(ids[:LIVE])
    rows = [(g, ORDER, False) for g in live]
    rows += [(g, ORDER, True) for g in ids[LIVE : LIVE + 50]]
    rows += [(g, ORDER + 1, False) for g in ids[LIVE + 50 :]]
    pool = await env.pool("order_history")
    await pool.executemany(
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
           VALUES ($1, 1, $2, $2, 1, true, false, $3)""",
        [(ORDER, T0, LIVE), (ORDER + 1, T0, 50)],
    )
    await pool.executemany(
        """INSERT INTO goods (id, order_id, name, created_at, updated_at, version, deleted)
           VALUES ($1, $2, $3, $4, $4, 1, $5)""",
        [(g, order, f"g{g}", T0 + dt.timedelta(seconds=g), deleted) for g, order, deleted in rows],
    )
    await pool.execute("ANALYZE goods")
    return env, live


async def detail(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(f"/v1/order-history/{ORDER}", params=params)
    assert response.status_code == 200, (params, response.text)
    body: dict[str, Any] = response.json()
    return body


async def walk(client: httpx.AsyncClient, limit: int) -> list[int]:
    """Every goods page of the order, following goods_next; the goods ids in the order the pages gave them."""
    seen: list[int] = []
    after: int | None = None
    for _ in range(LIVE + 1):
        body = await detail(client, goods_limit=limit, **({"goods_after": after} if after else {}))
        assert body["goods_count"] == LIVE, "the count is the order's, not the page's"
        ids = [g["id"] for g in body["goods"]]
        seen += ids
        after = body["goods_next"]
        if after is None:
            return seen
        assert len(ids) == limit and after == ids[-1], "a page before the last is full and names its last id"
    raise AssertionError("the walk did not end")


async def test_paging_visits_every_live_goods_once_in_id_order(filled: tuple[Env, list[int]]) -> None:
    env, live = filled
    async with env.client("order_history") as client:
        for limit in (1, 7, 100, LIVE, LIVE - 1, 1000):
            assert await walk(client, limit) == live, limit


async def test_the_default_page_and_what_every_page_holds(filled: tuple[Env, list[int]]) -> None:
    env, live = filled
    async with env.client("order_history") as client:
        body = await detail(client)
        assert set(body) == {"id", "user_id", "created_at", "updated_at", "goods_count", "goods", "goods_next"}
        assert (body["id"], body["user_id"], body["goods_count"]) == (ORDER, 1, LIVE)
        assert [g["id"] for g in body["goods"]] == live[:100]
        assert body["goods_next"] == live[99]
        assert body["goods"][0] == {
            "id": live[0],
            "name": f"g{live[0]}",
            "price_cents": None,
            "created_at": body["goods"][0]["created_at"],
        }
        assert dt.datetime.fromisoformat(body["goods"][0]["created_at"]) == T0 + dt.timedelta(seconds=live[0])
        # goods_after need not be the id of a goods item: the page starts after it
        i = next(i for i in range(LIVE - 1) if live[i + 1] - live[i] > 1)
        between = await detail(client, goods_after=live[i] + 1, goods_limit=3)
        assert [g["id"] for g in between["goods"]] == live[i + 1 : i + 4]
        last = await detail(client, goods_after=live[-1])
        assert (last["goods"], last["goods_next"], last["goods_count"]) == ([], None, LIVE)
        empty = (await client.get(f"/v1/order-history/{ORDER + 2}", params={"goods_limit": 5})).status_code
        assert empty == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"goods_limit": 0}, "goods_limit"),
        ({"goods_limit": 1001}, "goods_limit"),
        ({"goods_limit": -1}, "goods_limit"),
        ({"goods_limit": "ten"}, "goods_limit"),
        ({"goods_limit": 1.5}, "goods_limit"),
        ({"goods_limit": ""}, "goods_limit"),
        ({"goods_after": 0}, "goods_after"),
        ({"goods_after": -3}, "goods_after"),
        ({"goods_after": "x"}, "goods_after"),
        ({"goods_after": 2**63}, "goods_after"),
    ],
)
async def test_bad_paging_parameters_are_refused_naming_the_field(env: Env, params: dict[str, Any], field: str) -> None:
    async with env.client("order_history") as client:
        response = await client.get(f"/v1/order-history/{ORDER}", params=params)
        assert response.status_code == 422, (params, response.text)
        assert [f["field"] for f in response.json()["fields"]] == [field], response.text


async def test_a_goods_page_reads_the_page_from_the_index_whatever_the_orders_size(
    filled: tuple[Env, list[int]],
) -> None:
    """The API's own sessions (generic plans) read one range of goods_live_by_order, and stop after the page."""
    env, live = filled
    async with env.app_client("order_history") as (app, _), app.state.pool.acquire() as conn:
        for after in (0, live[100]):
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {queries.GOODS_PAGE}", ORDER, after, 11)
            plan = json.loads(raw)[0]["Plan"]
            assert plan["Node Type"] == "Limit" and plan["Actual Rows"] == 11, plan
            (scan,) = plan["Plans"]
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan
            assert scan["Index Name"] == "goods_live_by_order" and scan["Actual Rows"] == 11, scan
            assert "Filter" not in scan, "every row the scan reads is one of the page's"
