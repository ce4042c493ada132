"""Filters, sorts and cursors of GET /v1/order-history against plain SQL (order_history/api/queries.py).

The read model is filled directly with orders of a few users (ids 10, 20, ...),
goods counts in every kind of bucket, and creation times that follow the ids up
to a few seconds (as the order service's do, within the creation skew setting)
with many ties. Each combination of user, created_at range, threshold and sort is
compared with a plain `WHERE ... ORDER BY ... LIMIT ... OFFSET` and with a walk
over all its pages by cursor.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from order_history.api.queries import BAND_UPPER, band_of
from tests.harness import Env

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
COUNTS = [0, *range(1, 45), 48, 49, 64, 100, 1024, 5000, 70000]
# Both sides of the bands' edges (queries.BAND_UPPER) and of the buckets' tails.
THRESHOLDS = [0, 1, 2, 4, 5, 7, 9, 10, 11, 14, 30, 39, 40, 47, 99, 100, 101, 1024, 2**31 - 2]
USERS = [None, 1, 2, 7, 999]  # 1 has most orders, 7 a few, 999 none
RANGES: list[tuple[dt.datetime | None, dt.datetime | None]] = [
    (None, None),
    (BASE + dt.timedelta(hours=1), None),
    (None, BASE + dt.timedelta(hours=2)),
    (BASE + dt.timedelta(minutes=40), BASE + dt.timedelta(minutes=200)),
    (BASE + dt.timedelta(minutes=100, seconds=7), BASE + dt.timedelta(minutes=100, seconds=8)),  # ties
    (BASE + dt.timedelta(hours=3), BASE + dt.timedelta(hours=1)),  # empty
]
SORTS = {"id": "id", "-created_at": "created_at DESC, id DESC"}
ORDERS = 4000


def reference_sql(order: str) -> str:
    return f"""SELECT id FROM orders
               WHERE known AND NOT deleted AND goods_count > $1
                 AND ($2::bigint IS NULL OR user_id = $2)
                 AND ($3::timestamptz IS NULL OR created_at >= $3)
                 AND ($4::timestamptz IS NULL OR created_at < $4)
               ORDER BY {order} LIMIT $5 OFFSET $6"""


def params_of(
    threshold: int, user: int | None, span: tuple[dt.datetime | None, dt.datetime | None], sort: str
) -> dict[str, Any]:
    params: dict[str, Any] = {"threshold": threshold, "sort": sort}
    if user is not None:
        params["user_id"] = user
    if span[0] is not None:
        params["created_from"] = span[0].isoformat()
    if span[1] is not None:
        # another zone for the same instant: the API compares instants
        params["created_to"] = span[1].astimezone(dt.timezone(dt.timedelta(hours=-3))).isoformat()
    return params


def created_of(i: int, jitter: int = 0) -> dt.datetime:
    """Whole seconds (many orders share a created_at), up to 3 s out of id order: within the 5 s skew."""
    return BASE + dt.timedelta(seconds=i * 3 + jitter)


def order_rows(rng: random.Random, ids: range) -> list[tuple[Any, ...]]:
    rows = []
    for i in ids:
        count = COUNTS[i % len(COUNTS)] if i < 3 * len(COUNTS) else rng.choice(COUNTS)
        known, deleted = (True, False) if i % 13 else rng.choice([(False, False), (True, True)])
        user = rng.choices([1, 2, 3, 4, 5, 6, 7], weights=[60, 20, 8, 5, 4, 2, 1])[0]
        rows.append((10 * i, user, created_of(i, rng.randrange(-3, 4)), count, known, deleted))
    return rows


async def insert(env: Env, rows: list[tuple[Any, ...]]) -> None:
    pool = await env.pool("order_history")
    await pool.executemany(
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
           VALUES ($1, $2, $3, $3, 1, $5, $6, $4)""",
        rows,
    )


@pytest.fixture
async def filled(env: Env) -> Env:
    await insert(env, order_rows(random.Random(11), range(1, ORDERS + 1)))
    await (await env.pool("order_history")).execute("ANALYZE orders")
    return env


async def walk(client: httpx.AsyncClient, params: dict[str, Any], limit: int) -> list[int]:
    """Every page of a query by cursor; the ids in the order the pages gave them."""
    seen: list[int] = []
    cursor = None
    for _ in range(ORDERS):
        page_params = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/order-history", params=page_params)
        assert response.status_code == 200, (page_params, response.text)
        body = response.json()
        seen += [item["id"] for item in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        assert len(body["data"]) == limit, "a page before the last is full"
    raise AssertionError("the walk did not end")


async def test_every_filter_and_sort_equals_plain_sql_by_offset_and_by_cursor(filled: Env) -> None:
    pool = await filled.pool("order_history")
    compared = 0
    async with filled.client("order_history") as client:
        for sort, order in SORTS.items():
            for user in USERS:
                for span in RANGES:
                    for threshold in THRESHOLDS:
                        params = params_of(threshold, user, span, sort)
                        args = (threshold, user, span[0], span[1])
                        expected = [r["id"] for r in await pool.fetch(reference_sql(order), *args, 10**6, 0)]
                        for limit, offset in ((50, 0), (7, 3)):
                            response = await client.get(
                                "/v1/order-history", params={**params, "limit": limit, "offset": offset}
                            )
                            assert response.status_code == 200, (params, response.text)
                            got = [item["id"] for item in response.json()["data"]]
                            assert got == expected[offset : offset + limit], (params, limit, offset)
                        if threshold in (0, 5, 10, 40):
                            assert await walk(client, params, 97) == expected, params
                        compared += bool(expected)
    assert compared > 200, "the data should list something for most combinations"


async def test_items_carry_the_rows_fields_and_the_last_page_has_no_cursor(filled: Env) -> None:
    pool = await filled.pool("order_history")
    async with filled.client("order_history") as client:
        body = (await client.get("/v1/order-history", params={"user_id": 7, "sort": "-created_at"})).json()
    rows = await pool.fetch(
        """SELECT id, user_id, created_at, goods_count FROM orders
           WHERE known AND NOT deleted AND goods_count > 0 AND user_id = 7 ORDER BY created_at DESC, id DESC"""
    )
    assert 0 < len(rows) < 50 and body["next_cursor"] is None
    got = [(i["id"], i["user_id"], dt.datetime.fromisoformat(i["created_at"]), i["goods_count"]) for i in body["data"]]
    assert got == [(r["id"], r["user_id"], r["created_at"], r["goods_count"]) for r in rows]


async def test_a_cursor_walk_under_concurrent_inserts_and_deletes_sees_each_stable_order_once(filled: Env) -> None:
    """Between pages, orders are deleted and new ones (older, newer, and inside the walk) appear."""
    pool = await filled.pool("order_history")
    rng = random.Random(5)
    stable_sql = reference_sql("id")
    for sort in SORTS:
        for user in (None, 1):
            params = params_of(0, user, (BASE + dt.timedelta(minutes=20), BASE + dt.timedelta(minutes=180)), sort)
            before = {
                r["id"]
                for r in await pool.fetch(
                    stable_sql, 0, user, BASE + dt.timedelta(minutes=20), BASE + dt.timedelta(minutes=180), 10**6, 0
                )
            }
            touched: set[int] = set()
            seen: list[int] = []
            cursor = None
            taken: set[int] = set()
            pages = 0
            async with filled.client("order_history") as client:
                while True:
                    response = await client.get(
                        "/v1/order-history", params={**params, "limit": 40, **({"cursor": cursor} if cursor else {})}
                    )
                    assert response.status_code == 200, response.text
                    body = response.json()
                    seen += [item["id"] for item in body["data"]]
                    cursor = body["next_cursor"]
                    pages += 1
                    if cursor is None:
                        break
                    victims = rng.sample(sorted(before - touched), 5)
                    await pool.execute("UPDATE orders SET deleted = true WHERE id = ANY($1)", victims)
                    touched.update(victims)
                    # new orders anywhere in the walk, before and after the page: ids between two
                    # existing ones, created between them (as orders created at the same moment)
                    fresh: list[tuple[Any, ...]] = []
                    while len(fresh) < 5:
                        i = rng.randrange(300, 3700)
                        if i not in taken:
                            taken.add(i)
                            fresh.append((10 * i + 5, user or 1, created_of(i), 3, True, False))
                    await insert(filled, fresh)
            assert pages > 5
            assert len(seen) == len(set(seen)), "no order twice"
            assert before - touched <= set(seen), "every order that matched for the whole walk was seen"
            keys = {
                r["id"]: (r["created_at"], r["id"])
                for r in await pool.fetch("SELECT id, created_at FROM orders WHERE id = ANY($1)", seen)
            }
            order = [keys[i] for i in seen] if sort == "-created_at" else seen
            assert order == sorted(order, reverse=sort == "-created_at"), "in the query's order"
            await pool.execute("UPDATE orders SET deleted = false WHERE id = ANY($1)", sorted(touched))
            await pool.execute("DELETE FROM orders WHERE id % 10 <> 0")


async def test_bad_parameters_get_a_422_naming_the_field(filled: Env) -> None:
    async with filled.client("order_history") as client:
        page = (await client.get("/v1/order-history", params={"limit": 3, "user_id": 1})).json()
        cursor = page["next_cursor"]
        assert cursor
        flipped = cursor[:-3] + ("A" if cursor[-3] != "A" else "B") + cursor[-2:]
        cases: list[tuple[dict[str, Any], str]] = [
            ({"user_id": 0}, "user_id"),
            ({"user_id": "x"}, "user_id"),
            ({"user_id": 2**63}, "user_id"),
            ({"created_from": "2026-01-01T00:00:00"}, "created_from"),  # no time zone
            ({"created_from": "yesterday"}, "created_from"),
            ({"created_to": "2026-13-01T00:00:00Z"}, "created_to"),
            ({"sort": "created_at"}, "sort"),
            ({"sort": "-id"}, "sort"),
            ({"cursor": "not a cursor!"}, "cursor"),
            ({"cursor": "x" * 200}, "cursor"),
            ({"user_id": 1, "cursor": flipped}, "cursor"),
            ({"user_id": 2, "cursor": cursor}, "cursor"),  # another query's
            ({"user_id": 1, "threshold": 1, "cursor": cursor}, "cursor"),
            ({"user_id": 1, "sort": "-created_at", "cursor": cursor}, "cursor"),
            ({"user_id": 1, "cursor": cursor, "offset": 5}, "cursor"),
            ({"user_id": 1, "cursor": cursor[:-1]}, "cursor"),
        ]
        for params, field in cases:
            response = await client.get("/v1/order-history", params=params)
            assert response.status_code == 422, (params, response.status_code, response.text)
            assert field in [f["field"] for f in response.json()["fields"]], (params, response.text)
        # the same cursor with another limit is the same query: accepted
        response = await client.get("/v1/order-history", params={"user_id": 1, "limit": 10, "cursor": cursor})
        assert response.status_code == 200
        ids = [item["id"] for item in response.json()["data"]]
        assert ids and ids[0] > page["data"][-1]["id"]


async def test_a_cursor_from_another_key_is_refused(filled: Env) -> None:
    async with filled.client("order_history") as client:
        cursor = (await client.get("/v1/order-history", params={"limit": 2})).json()["next_cursor"]
    async with filled.client("order_history", cursor_key=SecretStr("another key")) as client:
        response = await client.get("/v1/order-history", params={"limit": 2, "cursor": cursor})
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == "cursor"


async def test_times_beyond_the_years_1_to_9999_in_utc_are_the_ends_of_time(filled: Env) -> None:
    async with filled.client("order_history") as client:

        async def ids(**params: Any) -> list[int]:
            response = await client.get("/v1/order-history", params={"limit": 30, **params})
            assert response.status_code == 200, response.text
            return [item["id"] for item in response.json()["data"]]

        everything = await ids()
        assert everything
        assert await ids(created_from="0001-01-01T00:00:00+05:00") == everything
        assert await ids(created_to="9999-12-31T23:00:00-05:00") == everything
        assert await ids(created_from="9999-12-31T23:00:00-05:00") == []
        assert await ids(created_to="0001-01-01T00:00:00+05:00", sort="-created_at") == []


async def test_the_bands_in_python_are_the_bands_in_sql(env: Env) -> None:
    pool = await env.pool("order_history")
    counts = [*range(1, 2 * BAND_UPPER[-1]), 2**31 - 1]
    in_sql = await pool.fetch("SELECT n, goods_count_band(n) AS band FROM unnest($1::integer[]) AS n", counts)
    assert [(r["n"], r["band"]) for r in in_sql] == [(n, band_of(n)) for n in counts]
