"""Least privilege: owners migrate, services only read and write their own rows, the
order-history API only reads; every service role has server-side timeouts; a request
that cannot get a pooled connection in time answers 503."""

from __future__ import annotations

import asyncpg
import pytest

from devstack.databases import DATABASES
from tests.harness import Env


async def _as(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


async def test_the_order_history_api_queries_as_a_role_that_cannot_write(env: Env) -> None:
    async with env.app_client("order_history") as (app, client):
        assert (await client.get("/v1/order-history")).status_code == 200
        async with app.state.pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == "order_history_reader"
            for sql in (
                "INSERT INTO orders (id) VALUES (1)",
                "UPDATE consumer_positions SET next_offset = 0",
                "DELETE FROM goods",
                "TRUNCATE orders",
                "CREATE TABLE sneaky (x int)",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)


@pytest.mark.parametrize("db", DATABASES, ids=lambda db: db.name)
async def test_a_service_role_reads_and_writes_rows_and_nothing_more(env: Env, db: object) -> None:
    from devstack.databases import Database

    assert isinstance(db, Database)
    port = env.stack.config.pg_port
    conn = await _as(db.writer.url(db.name, port))
    try:
        table = {"orders": "orders", "goods": "goods", "order_history": "consumer_positions"}[db.name]
        await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        for sql in (
            f"TRUNCATE {table}",
            f"DROP TABLE {table}",
            "CREATE TABLE sneaky (x int)",
            f"ALTER TABLE {table} ADD COLUMN x int",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        for setting in ("statement_timeout", "idle_in_transaction_session_timeout"):
            assert await conn.fetchval(f"SELECT setting::int FROM pg_settings WHERE name = '{setting}'") > 0
    finally:
        await conn.close()
    other = next(d for d in DATABASES if d.name != db.name)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # not even CONNECT to another service's database
        await _as(db.writer.url(other.name, port))


async def test_a_request_that_gets_no_connection_in_time_answers_503(env: Env) -> None:
    async with env.app_client("order", db_pool_size=1, db_acquire_timeout=0.2) as (app, client):
        assert (await client.get("/readyz")).status_code == 200
        async with app.state.pool.acquire():  # the pool's only connection is taken
            response = await client.post("/v1/order", json={"user_id": 1})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
        assert (await client.post("/v1/order", json={"user_id": 1})).status_code == 201
