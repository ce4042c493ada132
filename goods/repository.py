"""SQL for the goods table. Every function runs on the caller's connection.

A write is one statement: the goods row and its outbox event (built by
`shared.outbox.insert_sql`) commit together, in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from goods.schemas import GoodsPublic
from shared import outbox
from shared.command_service import Entity
from shared.database import Connection

GOODS = Entity(
    name="goods",
    table="goods",
    columns="id, order_id, name, created_at, updated_at, version",
    data={
        "id": "w.id",
        "order_id": "w.order_id",
        "name": "w.name",
        "created_at": "w.created_at",
        "updated_at": "w.updated_at",
    },
    public=GoodsPublic,
)

# Many goods in one statement (see shared.batching): ids are drawn in input order,
# and the rows come back in input order. An id with a version floor (migration 0004:
# the repair removed a read-model row of that id) starts above it.
_INSERT_MANY = f"""
WITH input AS (
    SELECT nextval('goods_id_seq') AS id, t.order_id, t.name, t.n
    FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS t(order_id, name, n)),
     w AS (INSERT INTO goods (id, order_id, name, version)
           SELECT id, order_id, name, COALESCE(f.version, 0) + 1 FROM input LEFT JOIN version_floors f USING (id)
           RETURNING {GOODS.columns}),
     e AS ({outbox.insert_sql("goods.created", "w", "w.id", "w.version", dict(GOODS.data))})
SELECT w.* FROM w JOIN input USING (id) ORDER BY input.n"""

# $1 id, $2 the new order_id or NULL (keep), $3 whether to set the name, $4 the name,
# $5 the expected version or NULL (compare-and-set).
UPDATE = outbox.with_event(
    f"""UPDATE goods SET
            order_id = COALESCE($2, order_id),
            name = CASE WHEN $3 THEN $4 ELSE name END,
            version = version + 1,
            updated_at = now()
        WHERE id = $1 AND ($5::integer IS NULL OR version = $5)
        RETURNING {GOODS.columns}""",
    "goods.updated",
    "w.version",
    dict(GOODS.data),
    GOODS.columns,
)


async def insert_many(conn: Connection, items: Sequence[tuple[int, str | None]]) -> list[asyncpg.Record]:
    """Create one goods item per (order_id, name), each with its goods.created event; rows in input order."""
    return await conn.fetch(_INSERT_MANY, [order_id for order_id, _ in items], [name for _, name in items])
