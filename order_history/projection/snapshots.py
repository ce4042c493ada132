"""Snapshots (*.resynced, written by `resync`): applied beside the batch statement, a few statements per part.

Rare repairs, not the hot path. Each overwrites a row whose version is not newer
(`<=`: the row may wrongly claim the snapshot's version). One of an entity the
command side does not have marks the row deleted at the snapshot's version, if
the read model has it as created by its own events (a placeholder order may
yet be created): GONE_VERSION for an id its service deleted, so nothing comes
after it; for an id its service has not handed out yet, the version the row
had, above which the service will start the entity it later creates there
(shared/command/resync.py). Either way the row stays as a tombstone, and the version
guard of every later event decides, as for a delete. goods_count is then
recounted, not maintained, for every order they touch: a repaired row may
have been counted wrongly before.

A snapshot arrives through its topic as any event does: the rows it writes
record its partition and offset (columns.SOURCE), also when it removes them.
"""

from __future__ import annotations

from typing import Any, Final

from order_history.projection.columns import GOODS, ORDERS, Entity
from order_history.projection.encoders import as_columns, payload_fields
from order_history.projection.reduce import ReducedBatch, Source
from shared.database import Connection
from shared.events import GoodsResyncedData, OrderResyncedData

_NO_SOURCE: Final[tuple[None, None]] = (None, None)


def _snapshot_input(entity: Entity) -> str:
    """The CTE `s` of a snapshot statement: rows (id, present, columns..., version) from typed arrays."""
    names = ["id", "present", *entity.names, "version"]
    types = ["bigint", "boolean", *(c.sql_type for c in entity.columns), "integer"]
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start=1))
    return f"s AS (\n    SELECT * FROM unnest({arrays})\n        AS t({', '.join(names)})\n)"


def _snapshot_write(entity: Entity, alias: str, own: dict[str, str]) -> str:
    """The INSERT of a snapshot's present rows, over any row that is not newer; `own`: the values
    of the projection's own columns (deleted, known...) it also sets."""
    names = ", ".join(entity.names)
    taken = ", ".join(f"{n} = EXCLUDED.{n}" for n in entity.names)
    return f"""INSERT INTO {entity.table} AS {alias} (id, {names}, version, {", ".join(own)})
    SELECT id, {names}, version, {", ".join(own.values())} FROM s WHERE present ORDER BY id
    ON CONFLICT (id) DO UPDATE SET
        {taken}, version = EXCLUDED.version, {", ".join(f"{k} = {v}" for k, v in own.items())}
    WHERE {alias}.version <= EXCLUDED.version"""


def _from_record(entity: Entity) -> str:
    """SET items of the record's columns (where the snapshot was read), from `s`."""
    return ", ".join(f"{name} = s.{name}" for name in entity.record)


_RESYNC_GOODS = f"""WITH {_snapshot_input(GOODS)}, before AS (
    SELECT g.id, g.order_id FROM goods g JOIN s USING (id) WHERE NOT g.deleted
), written AS (
    {_snapshot_write(GOODS, "g", {"deleted": "false", "counted_in_before": "NULL"})}
    RETURNING g.id, g.order_id
), gone AS (
    UPDATE goods g SET deleted = true, version = s.version, counted_in_before = NULL, {_from_record(GOODS)}
    FROM s WHERE g.id = s.id AND NOT s.present AND g.version <= s.version
    RETURNING g.id
)
SELECT array(SELECT order_id FROM written
             UNION SELECT b.order_id FROM before b JOIN (SELECT id FROM written UNION ALL SELECT id FROM gone) c
                   USING (id)) AS orders"""
_RESYNC_ORDERS = f"""WITH {_snapshot_input(ORDERS)}, written AS (
    {_snapshot_write(ORDERS, "o", {"known": "true", "deleted": "false"})}
    RETURNING o.id
), gone AS (
    UPDATE orders o SET deleted = true, version = s.version, {_from_record(ORDERS)}
    FROM s WHERE o.id = s.id AND NOT s.present AND o.known AND o.version <= s.version
    RETURNING o.id
)
SELECT array(SELECT id FROM written UNION ALL SELECT id FROM gone) AS orders"""
# Orders named by goods get a row (a placeholder) if they have none, then every
# order to recount is locked, in id order, before the count is taken: in READ
# COMMITTED the count's snapshot then postdates every committed change of those
# orders' goods, and a change not committed yet waits for the lock and adds its
# delta to the recounted value.
_PLACEHOLDERS = """INSERT INTO orders (id) SELECT id FROM unnest($1::bigint[]) AS t(id) ORDER BY id
                   ON CONFLICT DO NOTHING"""
_LOCK_ORDERS = "SELECT id FROM orders WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
_RECOUNT = """UPDATE orders o SET goods_count = c.n
              FROM (SELECT t.id, (SELECT count(*) FROM goods g WHERE g.order_id = t.id AND NOT g.deleted)::integer
                    FROM unnest($1::bigint[]) AS t(id)) AS c(id, n)
              WHERE o.id = c.id AND o.goods_count <> c.n"""

_GOODS_FIELDS: Final = payload_fields(GOODS)
_ORDER_FIELDS: Final = payload_fields(ORDERS)


async def apply_resynced(conn: Connection, batch: ReducedBatch) -> None:
    """Apply the batch's snapshots; call inside the transaction that applied the rest of it."""
    recount: set[int] = set()
    if batch.resynced_goods:
        rows: list[tuple[Any, ...]] = []
        at: dict[int, Source] = batch.goods_sources
        for e in batch.resynced_goods.values():
            g = e.data
            assert isinstance(g, GoodsResyncedData)
            source = at.get(e.aggregate_id, _NO_SOURCE)
            rows.append((e.aggregate_id, g.exists, *_GOODS_FIELDS(g), *source, e.aggregate_version))
        named = await conn.fetchval(_RESYNC_GOODS, *as_columns(rows, len(GOODS.columns) + 3))
        await conn.execute(_PLACEHOLDERS, named)
        recount.update(named)
    if batch.resynced_orders:
        rows = []
        at = batch.order_sources
        for e in batch.resynced_orders.values():
            o = e.data
            assert isinstance(o, OrderResyncedData)
            source = at.get(e.aggregate_id, _NO_SOURCE)
            rows.append((e.aggregate_id, o.exists, *_ORDER_FIELDS(o), *source, e.aggregate_version))
        recount.update(await conn.fetchval(_RESYNC_ORDERS, *as_columns(rows, len(ORDERS.columns) + 3)))
    if recount:
        ids = sorted(recount)
        await conn.execute(_LOCK_ORDERS, ids)
        await conn.execute(_RECOUNT, ids)
