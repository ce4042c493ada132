"""SQL for the goods table. Every function runs on the caller's connection."""

from __future__ import annotations

import asyncpg

from shared.database import Connection

_COLUMNS = "id, order_id, name, created_at, updated_at, version"


async def insert(conn: Connection, order_id: int, name: str | None) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO goods (order_id, name) VALUES ($1, $2) RETURNING {_COLUMNS}", order_id, name
    )
    assert row is not None
    return row


async def get(conn: Connection, goods_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM goods WHERE id = $1", goods_id)


async def update(
    conn: Connection,
    goods_id: int,
    order_id: int | None,
    set_name: bool,
    name: str | None,
    expected_version: int | None,
) -> asyncpg.Record | None:
    """Compare-and-set on version: None when the row is missing or at another version."""
    return await conn.fetchrow(
        f"""UPDATE goods SET
                order_id = COALESCE($2, order_id),
                name = CASE WHEN $3 THEN $4 ELSE name END,
                version = version + 1,
                updated_at = now()
            WHERE id = $1 AND ($5::integer IS NULL OR version = $5)
            RETURNING {_COLUMNS}""",
        goods_id,
        order_id,
        set_name,
        name,
        expected_version,
    )


async def delete(conn: Connection, goods_id: int, expected_version: int | None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""DELETE FROM goods WHERE id = $1 AND ($2::integer IS NULL OR version = $2)
            RETURNING {_COLUMNS}, now() AS deleted_at""",
        goods_id,
        expected_version,
    )


async def current_version(conn: Connection, goods_id: int) -> int | None:
    version: int | None = await conn.fetchval("SELECT version FROM goods WHERE id = $1", goods_id)
    return version
