"""SQL for the goods table. Every function runs on the caller's connection.

A write is one statement: the goods row and its outbox event (built by
`shared.outbox.insert_sql`) commit together, in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from shared import outbox
from shared.database import Connection

_COLUMNS = "id, order_id, name, created_at, updated_at, version"
_DATA = {
    "id": "w.id",
    "order_id": "w.order_id",
    "name": "w.name",
    "created_at": "w.created_at",
    "updated_at": "w.updated_at",
}

# Many goods in one statement (see shared.batching): ids are drawn in input order,
# and the rows come back in input order.
_INSERT_MANY = f"""
WITH input AS (
    SELECT nextval('goods_id_seq') AS id, t.order_id, t.name, t.n
    FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(order_id, name, n)),
     w AS (INSERT INTO goods (id, order_id, name) SELECT id, order_id, name FROM input RETURNING {_COLUMNS}),
     e AS ({outbox.insert_sql("goods.created", "w", "w.id", "w.version", _DATA)})
SELECT w.* FROM w JOIN input USING (id) ORDER BY input.n"""

_UPDATE = outbox.with_event(
    f"""UPDATE goods SET
            order_id = COALESCE($2, order_id),
            name = CASE WHEN $3 THEN $4 ELSE name END,
            version = version + 1,
            updated_at = now()
        WHERE id = $1 AND ($5::integer IS NULL OR version = $5)
        RETURNING {_COLUMNS}""",
    "goods.updated",
    "w.version",
    _DATA,
    _COLUMNS,
)

_DELETE = outbox.delete_with_event("goods", "goods.deleted", _DATA, _COLUMNS)


async def insert_many(conn: Connection, items: Sequence[tuple[int, str | None]]) -> list[asyncpg.Record]:
    """Create one goods item per (order_id, name), each with its goods.created event; rows in input order."""
    return await conn.fetch(_INSERT_MANY, [order_id for order_id, _ in items], [name for _, name in items])


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
    """Compare-and-set on version, with the goods.updated event: None when the row is missing or at another version."""
    return await conn.fetchrow(_UPDATE, goods_id, order_id, set_name, name, expected_version)


async def delete(conn: Connection, goods_id: int, expected_version: int | None) -> asyncpg.Record | None:
    """Delete (compare-and-set) with the goods.deleted event: None when the row is missing or at another version."""
    return await conn.fetchrow(_DELETE, goods_id, expected_version)


async def current_version(conn: Connection, goods_id: int) -> int | None:
    version: int | None = await conn.fetchval("SELECT version FROM goods WHERE id = $1", goods_id)
    return version
