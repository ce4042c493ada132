"""The projection: applies a batch of decoded events to the read model, set-based.

Events carry the entity's whole state, so a batch is first reduced to the newest
version of each entity; then three statements apply it, whatever its size:

1. upsert goods, guarded by `stored.version < event.version`: a duplicate, or
   an older version arriving late, changes nothing, and a deleted entity is a
   tombstone that remembers its version; the same statement returns the orders
   those goods belonged to before, which need a recount too;
2. make sure every order the batch touches has a row, and lock those rows in
   id order, so that concurrent consumers cannot lose a count: an order never
   seen is inserted whole from its event, or as a placeholder (known = false)
   when goods name it before the order's own event;
3. one UPDATE of the touched orders: the order events' state under the same
   version guard (a deleted order is a tombstone too), and goods_count
   recounted for every order whose goods may have changed, from the goods table
   itself (exact by construction, never a drifting +1/-1). It runs after 2 has
   locked those rows, so its snapshot holds every concurrent change to their goods.

Goods rows are not locked separately: every event of one goods item is in one
partition (keyed by its id), and the caller holds that partition's position row
locked for the whole transaction, so no other transaction writes those rows.
Each batch is sent as one JSON parameter per table (encoded by orjson), which
costs the consumer far less than one array per column.

The caller runs this in the same transaction that advances the consumer's
tracking records, so the read model is a deterministic function of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from shared.database import Connection
from shared.events import Event, GoodsData, GoodsDeletedData, OrderData, OrderDeletedData


@dataclass
class ReducedBatch:
    orders: dict[int, Event] = field(default_factory=dict)
    goods: dict[int, Event] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.orders) + len(self.goods)


def reduce_events(events: Iterable[Event]) -> ReducedBatch:
    """Keep, per entity, the event with the highest aggregate_version."""
    batch = ReducedBatch()
    for event in events:
        target = batch.orders if event.event_type.startswith("order.") else batch.goods
        seen = target.get(event.aggregate_id)
        if seen is None or event.aggregate_version > seen.aggregate_version:
            target[event.aggregate_id] = event
    return batch


@dataclass
class ApplyResult:
    orders_changed: int
    goods_changed: int


# 1. Goods, newest version wins; returns the orders the batch's goods belonged to
# before (this statement's snapshot is taken before its own changes).
_UPSERT_GOODS = """
WITH previous AS (SELECT DISTINCT order_id FROM goods WHERE id = ANY($2::bigint[]))
, upserted AS (
    INSERT INTO goods AS g (id, order_id, name, created_at, updated_at, version, deleted)
    SELECT id, order_id, name, created_at, updated_at, version, deleted
    FROM json_to_recordset($1::json) AS t(id bigint, order_id bigint, name text, created_at timestamptz,
                                          updated_at timestamptz, version integer, deleted boolean)
    ON CONFLICT (id) DO UPDATE SET
        order_id   = EXCLUDED.order_id,
        name       = CASE WHEN EXCLUDED.deleted THEN g.name ELSE EXCLUDED.name END,
        created_at = COALESCE(EXCLUDED.created_at, g.created_at),
        updated_at = COALESCE(EXCLUDED.updated_at, g.updated_at),
        version    = EXCLUDED.version,
        deleted    = EXCLUDED.deleted
    WHERE g.version < EXCLUDED.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted) AS changed, (SELECT array_agg(order_id) FROM previous) AS previous"""

# 2. Every touched order gets a row and is locked, in id order. An order the
# read model has no row for is inserted whole (from its event) or as a
# placeholder (known = false: goods named it first). An existing row is only
# locked: `DO UPDATE ... WHERE false` writes nothing but PostgreSQL locks every
# conflicting row of ON CONFLICT DO UPDATE. Returns the ids it inserted.
_LOCK_ORDERS = """
WITH ev AS (
    SELECT * FROM json_to_recordset($1::json)
        AS t(id bigint, user_id bigint, created_at timestamptz, updated_at timestamptz, version integer,
             deleted boolean)
), ids AS (SELECT id FROM ev UNION SELECT unnest($2::bigint[]))
INSERT INTO orders AS o (id, user_id, created_at, updated_at, version, known, deleted)
SELECT ids.id, ev.user_id, ev.created_at, ev.updated_at, COALESCE(ev.version, 0), ev.id IS NOT NULL,
       COALESCE(ev.deleted, false)
FROM ids LEFT JOIN ev ON ev.id = ids.id
ORDER BY ids.id
ON CONFLICT (id) DO UPDATE SET known = o.known WHERE false
RETURNING id"""

# 3. Orders: the events' state (newest version wins) and the recount, one new row version per order.
_UPDATE_ORDERS = """
WITH ev AS (
    SELECT * FROM json_to_recordset($1::json)
        AS t(id bigint, user_id bigint, created_at timestamptz, updated_at timestamptz, version integer,
             deleted boolean)
), counted AS (
    SELECT a.id, COALESCE(c.n, 0) AS n
    FROM unnest($2::bigint[]) AS a(id)
    LEFT JOIN (SELECT order_id, count(*)::integer AS n FROM goods
               WHERE order_id = ANY($2::bigint[]) AND NOT deleted GROUP BY order_id) AS c ON c.order_id = a.id
), src AS (
    SELECT COALESCE(ev.id, counted.id) AS id, ev.user_id, ev.created_at, ev.updated_at, ev.version, ev.deleted,
           counted.n
    FROM ev FULL JOIN counted ON counted.id = ev.id
)
UPDATE orders AS o SET
    user_id     = CASE WHEN o.version < s.version THEN COALESCE(s.user_id, o.user_id) ELSE o.user_id END,
    created_at  = CASE WHEN o.version < s.version THEN COALESCE(s.created_at, o.created_at) ELSE o.created_at END,
    updated_at  = CASE WHEN o.version < s.version THEN COALESCE(s.updated_at, o.updated_at) ELSE o.updated_at END,
    version     = CASE WHEN o.version < s.version THEN s.version ELSE o.version END,
    known       = CASE WHEN o.version < s.version THEN true ELSE o.known END,
    deleted     = CASE WHEN o.version < s.version THEN s.deleted ELSE o.deleted END,
    goods_count = COALESCE(s.n, o.goods_count)
FROM src AS s
WHERE o.id = s.id AND (o.version < s.version OR o.goods_count <> s.n)"""


async def apply_batch(conn: Connection, batch: ReducedBatch) -> ApplyResult:
    """Apply `batch`; call inside a transaction."""
    counted: set[int] = set()
    goods_changed = 0
    if batch.goods:
        goods_rows: list[dict[str, object]] = []
        for event in batch.goods.values():
            data = event.data
            assert isinstance(data, GoodsData | GoodsDeletedData)
            counted.add(data.order_id)
            goods_rows.append(
                {
                    "id": event.aggregate_id,
                    "order_id": data.order_id,
                    "name": data.name,
                    "created_at": data.created_at,
                    "updated_at": data.updated_at,
                    "version": event.aggregate_version,
                    "deleted": event.event_type == "goods.deleted",
                }
            )
        row = await conn.fetchrow(_UPSERT_GOODS, orjson.dumps(goods_rows).decode(), list(batch.goods))
        assert row is not None
        goods_changed = int(row["changed"])
        if goods_changed and row["previous"]:
            counted.update(row["previous"])
        elif not goods_changed:
            counted.clear()  # duplicates or stale versions only: no count can have changed
    order_rows: dict[int, dict[str, object]] = {}
    for event in batch.orders.values():
        order = event.data
        assert isinstance(order, OrderData | OrderDeletedData)
        order_rows[event.aggregate_id] = {
            "id": event.aggregate_id,
            "user_id": order.user_id,
            "created_at": order.created_at,
            "updated_at": order.updated_at,
            "version": event.aggregate_version,
            "deleted": event.event_type == "order.deleted",
        }
    if not order_rows and not counted:
        return ApplyResult(0, goods_changed)
    inserted = await conn.fetch(
        _LOCK_ORDERS, orjson.dumps(list(order_rows.values())).decode(), sorted(counted.difference(order_rows))
    )
    orders_changed = len(inserted)
    for r in inserted:
        order_rows.pop(r[0], None)  # inserted whole: nothing left to update but its count
    if order_rows or counted:
        status = await conn.execute(_UPDATE_ORDERS, orjson.dumps(list(order_rows.values())).decode(), sorted(counted))
        orders_changed += int(status.split()[-1])
    return ApplyResult(orders_changed, goods_changed)
