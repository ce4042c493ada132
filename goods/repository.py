"""SQL for the goods table. Every function runs on the caller's connection.

A write is one statement: the goods row and its outbox event (built by
`shared.command.outbox.insert_sql`) commit together, in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from goods.schemas import GoodsCreate, GoodsPublic, GoodsUpdate
from shared.command import outbox
from shared.command.service import Entity
from shared.database import Connection

# The goods' own fields, each declared once: what the API takes, the table stores
# and every goods event carries, beside id, version and the times. (column, SQL type)
FIELDS: Final = (("order_id", "bigint"), ("name", "text"), ("price_cents", "bigint"))
NAMES: Final = tuple(name for name, _ in FIELDS)

GOODS = Entity(
    name="goods",
    table="goods",
    columns=f"id, {', '.join(NAMES)}, created_at, updated_at, version",
    data={
        "id": "w.id",
        **{name: f"w.{name}" for name in NAMES},
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
    SELECT nextval('goods_id_seq') AS id, {", ".join(f"t.{name}" for name in NAMES)}, t.n
    FROM unnest({", ".join(f"${i}::{sql_type}[]" for i, (_, sql_type) in enumerate(FIELDS, start=1))})
        WITH ORDINALITY AS t({", ".join(NAMES)}, n)),
     w AS (INSERT INTO goods (id, {", ".join(NAMES)}, version)
           SELECT id, {", ".join(NAMES)}, COALESCE(f.version, 0) + 1 FROM input LEFT JOIN version_floors f USING (id)
           RETURNING {GOODS.columns}),
     e AS ({outbox.insert_sql("goods.created", "w", "w.id", "w.version", dict(GOODS.data))})
SELECT w.* FROM w JOIN input USING (id) ORDER BY input.n"""

# $1 id, then per field: whether to set it and its new value; last, the expected
# version or NULL (compare-and-set).
_SETS = ",\n            ".join(
    f"{name} = CASE WHEN ${2 + 2 * i} THEN ${3 + 2 * i}::{sql_type} ELSE {name} END"
    for i, (name, sql_type) in enumerate(FIELDS)
)
UPDATE = outbox.with_event(
    f"""UPDATE goods SET
            {_SETS},
            version = version + 1,
            updated_at = now()
        WHERE id = $1 AND (${2 + 2 * len(FIELDS)}::integer IS NULL OR version = ${2 + 2 * len(FIELDS)})
        RETURNING {GOODS.columns}""",
    "goods.updated",
    "w.version",
    dict(GOODS.data),
    GOODS.columns,
)


def create_item(body: GoodsCreate) -> tuple[Any, ...]:
    """A create's values, in FIELDS order."""
    return tuple(getattr(body, name) for name in NAMES)


def update_args(body: GoodsUpdate) -> tuple[Any, ...]:
    """An update's parameters after the id: per field, whether the body sets it and its value."""
    return tuple(x for name in NAMES for x in (name in body.model_fields_set, getattr(body, name)))


async def insert_many(conn: Connection, items: Sequence[tuple[Any, ...]]) -> list[asyncpg.Record]:
    """Create one goods item per tuple of FIELDS values, each with its goods.created event; rows in input order."""
    return await conn.fetch(_INSERT_MANY, *(list(values) for values in zip(*items, strict=True)))
