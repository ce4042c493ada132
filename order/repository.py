"""SQL for the orders table. Every function runs on the caller's connection."""

from __future__ import annotations

import asyncpg

from shared.database import Connection

_COLUMNS = "id, user_id, created_at, updated_at, version"


async def insert(conn: Connection, user_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(f"INSERT INTO orders (user_id) VALUES ($1) RETURNING {_COLUMNS}", user_id)
    assert row is not None
    return row


async def get(conn: Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM orders WHERE id = $1", order_id)


async def update(conn: Connection, order_id: int, user_id: int, expected_version: int | None) -> asyncpg.Record | None:
    """Compare-and-set on version: None when the row is missing or at another version."""
    return await conn.fetchrow(
        f"""UPDATE orders SET user_id = $2, version = version + 1, updated_at = now()
            WHERE id = $1 AND ($3::integer IS NULL OR version = $3)
            RETURNING {_COLUMNS}""",
        order_id,
        user_id,
        expected_version,
    )


async def delete(conn: Connection, order_id: int, expected_version: int | None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""DELETE FROM orders WHERE id = $1 AND ($2::integer IS NULL OR version = $2)
            RETURNING {_COLUMNS}, now() AS deleted_at""",
        order_id,
        expected_version,
    )


async def current_version(conn: Connection, order_id: int) -> int | None:
    version: int | None = await conn.fetchval("SELECT version FROM orders WHERE id = $1", order_id)
    return version
