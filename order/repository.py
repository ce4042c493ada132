"""SQL for the orders table. Every function runs on the caller's connection.

A write is one statement: the order row and its outbox event (built by
`shared.command.outbox.insert_sql`) commit together, in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from order.schemas import OrderPublic
from shared.command import outbox
from shared.command.service import Entity
from shared.database import Connection

ORDER = Entity(
    name="order",
    table="orders",
    columns="id, user_id, created_at, updated_at, version",
    data={"id": "w.id", "user_id": "w.user_id", "created_at": "w.created_at", "updated_at": "w.updated_at"},
    public=OrderPublic,
)

# Many orders in one statement (see shared.batching): ids are drawn in input order,
# and the rows come back in input order. An id with a version floor (migration 0004:
# the repair removed a read-model row of that id) starts above it.
_INSERT_MANY = f"""
WITH input AS (
    SELECT nextval('orders_id_seq') AS id, t.user_id, t.n
    FROM unnest($1::bigint[]) WITH ORDINALITY AS t(user_id, n)),
     w AS (INSERT INTO orders (id, user_id, version)
           SELECT id, user_id, COALESCE(f.version, 0) + 1 FROM input LEFT JOIN version_floors f USING (id)
           RETURNING {ORDER.columns}),
     e AS ({outbox.insert_sql("order.created", "w", "w.id", "w.version", dict(ORDER.data))})
SELECT w.* FROM w JOIN input USING (id) ORDER BY input.n"""

# $1 id, $2 user_id, $3 the expected version or NULL (compare-and-set).
UPDATE = outbox.with_event(
    f"""UPDATE orders SET user_id = $2, version = version + 1, updated_at = now()
        WHERE id = $1 AND ($3::integer IS NULL OR version = $3)
        RETURNING {ORDER.columns}""",
    "order.updated",
    "w.version",
    dict(ORDER.data),
    ORDER.columns,
)


async def insert_many(conn: Connection, user_ids: Sequence[int]) -> list[asyncpg.Record]:
    """Create one order per user id, each with its order.created event; rows in input order."""
    return await conn.fetch(_INSERT_MANY, user_ids)
