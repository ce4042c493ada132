"""SQL for the orders table. Every function runs on the caller's connection.

A write is one statement: the order row and its outbox event (built by
`shared.outbox.insert_sql`) commit together, in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared import outbox
from shared.database import Connection

_COLUMNS = "id, user_id, created_at, updated_at, version"
_DATA = {"id": "w.id", "user_id": "w.user_id", "created_at": "w.created_at", "updated_at": "w.updated_at"}

# Many orders in one statement (see shared.batching): ids are drawn in input order,
# and the rows come back in input order.
_INSERT_MANY = f"""
WITH input AS (
    SELECT nextval('orders_id_seq') AS id, t.user_id, t.n
    FROM unnest($1::bigint[]) WITH ORDINALITY AS t(user_id, n)),
     w AS (INSERT INTO orders (id, user_id) SELECT id, user_id FROM input RETURNING {_COLUMNS}),
     e AS ({outbox.insert_sql("order.created", "w", "w.id", "w.version", _DATA)})
SELECT w.* FROM w JOIN input USING (id) ORDER BY input.n"""

_UPDATE = outbox.with_event(
    f"""UPDATE orders SET user_id = $2, version = version + 1, updated_at = now()
        WHERE id = $1 AND ($3::integer IS NULL OR version = $3)
        RETURNING {_COLUMNS}""",
    "order.updated",
    "w.version",
    _DATA,
    _COLUMNS,
)

_DELETE = outbox.delete_with_event("orders", "order.deleted", _DATA, _COLUMNS)


async def insert_many(conn: Connection, user_ids: Sequence[int]) -> list[asyncpg.Record]:
    """Create one order per user id, each with its order.created event; rows in input order."""
    return await conn.fetch(_INSERT_MANY, user_ids)


async def get(conn: Connection, order_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {_COLUMNS} FROM orders WHERE id = $1", order_id)


async def update(conn: Connection, order_id: int, user_id: int, expected_version: int | None) -> asyncpg.Record | None:
    """Compare-and-set on version, with the order.updated event: None when the row is missing or at another version."""
    return await conn.fetchrow(_UPDATE, order_id, user_id, expected_version)


async def delete(conn: Connection, order_id: int, expected_version: int | None) -> asyncpg.Record | None:
    """Delete (compare-and-set) with the order.deleted event: None when the row is missing or at another version."""
    return await conn.fetchrow(_DELETE, order_id, expected_version)


async def current_version(conn: Connection, order_id: int) -> int | None:
    version: int | None = await conn.fetchval("SELECT version FROM orders WHERE id = $1", order_id)
    return version
