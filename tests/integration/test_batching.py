"""Group commit (shared.batching): concurrent creates share statements, yet each gets its own row and event."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from shared.batching import Batcher
from shared.database import Connection
from tests.harness import Env, wait_until

N = 200


async def _all_at_once(
    env: Env, service: str, app: FastAPI, client: httpx.AsyncClient, bodies: list[dict[str, object]]
) -> list[httpx.Response]:
    """POST every body at once while `table` is locked against inserts, and release it only when
    every request is either in flight (blocked on the lock) or queued in the app's batcher: the
    queued ones must then share statements, however fast the machine is."""
    table = {"order": "orders", "goods": "goods"}[service]
    pool = await env.pool(service)
    async with pool.acquire() as lock, lock.transaction():
        await lock.execute(f"LOCK TABLE {table} IN SHARE MODE")
        batcher: Batcher[object, object] = app.state.creator
        posting = asyncio.ensure_future(asyncio.gather(*(client.post(f"/v1/{service}", json=b) for b in bodies)))

        async def all_waiting() -> bool:
            return batcher.pending == len(bodies)

        await wait_until(all_waiting, 30, "every create to be in flight or queued")
    return await posting


async def test_concurrent_creates_get_their_own_rows_and_events(env: Env) -> None:
    async with env.app_client("order") as (order_app, orders), env.app_client("goods") as (goods_app, goods):
        order_responses = await _all_at_once(env, "order", order_app, orders, [{"user_id": 1000 + i} for i in range(N)])
        goods_responses = await _all_at_once(
            env, "goods", goods_app, goods, [{"order_id": 1 + i, "name": f"item {i}"} for i in range(N)]
        )
    created_orders = [r.json() for r in order_responses]
    created_goods = [r.json() for r in goods_responses]
    assert all(r.status_code == 201 for r in (*order_responses, *goods_responses))
    # Each caller got the row made from its own input.
    assert [o["user_id"] for o in created_orders] == [1000 + i for i in range(N)]
    assert [(g["order_id"], g["name"]) for g in created_goods] == [(1 + i, f"item {i}") for i in range(N)]
    assert len({o["id"] for o in created_orders}) == N and len({g["id"] for g in created_goods}) == N

    for service, created, fields in (
        ("order", created_orders, ("user_id",)),
        ("goods", created_goods, ("order_id", "name")),
    ):
        pool = await env.pool(service)
        rows = await pool.fetch(
            "SELECT payload, created_at FROM outbox WHERE (payload->>'aggregate_id')::bigint = ANY($1::bigint[])",
            [c["id"] for c in created],
        )
        events = {int(e["aggregate_id"]): e for e in (orjson.loads(r["payload"]) for r in rows)}
        assert len(rows) == N and len(events) == N  # one event per create
        for body in created:
            data = events[body["id"]]["data"]
            assert {f: data[f] for f in fields} == {f: body[f] for f in fields}
        # Creates that share a statement share its transaction's now(): every create queued
        # behind the statements in flight (at most max_in_flight of them) went in one statement.
        per_commit = Counter(r["created_at"] for r in rows)
        assert max(per_commit.values()) >= N - 4, per_commit


async def test_a_failing_item_fails_alone(env: Env) -> None:
    """A batch that PostgreSQL refuses is retried item by item: only the bad item gets the error."""
    pool = await env.pool("order")
    batch_sizes: list[int] = []

    async def divide(conn: Connection, divisors: Sequence[int]) -> list[int]:
        batch_sizes.append(len(divisors))
        rows = await conn.fetch(
            "SELECT 100 / d AS q FROM unnest($1::integer[]) WITH ORDINALITY AS t(d, n) ORDER BY n", list(divisors)
        )
        return [r["q"] for r in rows]

    batcher: Batcher[int, int] = Batcher(pool, divide, max_in_flight=1)
    results = await asyncio.gather(*(batcher.submit(d) for d in (1, 2, 0, 5, 10)), return_exceptions=True)

    assert results[:2] == [100, 50] and results[3:] == [20, 10]
    assert isinstance(results[2], asyncpg.DivisionByZeroError)
    # The first call ran alone; the four queued behind it went as one batch, which
    # failed, and then ran one by one.
    assert batch_sizes == [1, 4, 1, 1, 1, 1]


async def test_rejects_nonsense_limits(env: Env) -> None:
    pool = await env.pool("order")

    async def nothing(conn: Connection, items: Sequence[int]) -> list[int]:
        return list(items)

    with pytest.raises(ValueError):
        Batcher(pool, nothing, max_batch=0)
