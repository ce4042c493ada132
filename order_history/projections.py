"""The projection: applies a batch of decoded events to the read model, set-based.

Events carry the entity's whole state, so a batch is first reduced to the newest
version of each entity; then five statements apply it, whatever its size:

1. lock the goods rows the batch touches, and read their current order_id;
2. make sure every order the batch touches has a row (a placeholder, known =
   false, for orders that goods name before the order's own event), and lock
   those rows in id order, so that concurrent consumers cannot lose a count;
3. upsert goods and orders, each guarded by `stored.version < event.version`:
   a duplicate, or an older version arriving late, changes nothing, and a
   deleted entity is a tombstone that remembers its version;
4. recount goods_count for every order whose goods changed, from the goods
   table itself (exact by construction, never a drifting +1/-1).

The caller runs this in the same transaction that advances the consumer's
tracking records, so the read model is a deterministic function of the log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

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
    counts_changed: int


async def apply_batch(conn: Connection, batch: ReducedBatch) -> ApplyResult:
    """Apply `batch`; call inside a transaction."""
    goods_ids = sorted(batch.goods)
    previous_order: dict[int, int] = {}
    if goods_ids:
        rows = await conn.fetch(
            "SELECT id, order_id FROM goods WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", goods_ids
        )
        previous_order = {r["id"]: r["order_id"] for r in rows}

    counted_orders: set[int] = set(previous_order.values())
    for event in batch.goods.values():
        data = event.data
        assert isinstance(data, GoodsData | GoodsDeletedData)
        counted_orders.add(data.order_id)
    touched_orders = sorted(counted_orders | set(batch.orders))
    if touched_orders:
        await conn.execute(
            "INSERT INTO orders (id) SELECT unnest($1::bigint[]) ON CONFLICT (id) DO NOTHING", touched_orders
        )
        await conn.execute("SELECT 1 FROM orders WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", touched_orders)

    goods_changed = await _upsert_goods(conn, batch.goods.values()) if batch.goods else 0
    orders_changed = await _upsert_orders(conn, batch.orders.values()) if batch.orders else 0
    counts_changed = 0
    if goods_changed:
        status = await conn.execute(
            """UPDATE orders o SET goods_count = c.n
               FROM (SELECT a.id, COALESCE(g.n, 0) AS n
                     FROM unnest($1::bigint[]) AS a(id)
                     LEFT JOIN (SELECT order_id, count(*)::integer AS n FROM goods
                                WHERE order_id = ANY($1::bigint[]) AND NOT deleted
                                GROUP BY order_id) AS g ON g.order_id = a.id) AS c
               WHERE o.id = c.id AND o.goods_count <> c.n""",
            sorted(counted_orders),
        )
        counts_changed = int(status.split()[-1])
    return ApplyResult(orders_changed, goods_changed, counts_changed)


async def _upsert_goods(conn: Connection, events: Iterable[Event]) -> int:
    ids: list[int] = []
    order_ids: list[int] = []
    names: list[str | None] = []
    created: list[object] = []
    updated: list[object] = []
    versions: list[int] = []
    deleted: list[bool] = []
    for event in events:
        data = event.data
        assert isinstance(data, GoodsData | GoodsDeletedData)
        ids.append(event.aggregate_id)
        order_ids.append(data.order_id)
        names.append(data.name)
        created.append(data.created_at)
        updated.append(data.updated_at)
        versions.append(event.aggregate_version)
        deleted.append(event.event_type == "goods.deleted")
    status = await conn.execute(
        """INSERT INTO goods AS g (id, order_id, name, created_at, updated_at, version, deleted)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[],
                                $5::timestamptz[], $6::integer[], $7::boolean[])
           ON CONFLICT (id) DO UPDATE SET
               order_id   = EXCLUDED.order_id,
               name       = CASE WHEN EXCLUDED.deleted THEN g.name ELSE EXCLUDED.name END,
               created_at = COALESCE(EXCLUDED.created_at, g.created_at),
               updated_at = COALESCE(EXCLUDED.updated_at, g.updated_at),
               version    = EXCLUDED.version,
               deleted    = EXCLUDED.deleted
           WHERE g.version < EXCLUDED.version""",
        ids,
        order_ids,
        names,
        created,
        updated,
        versions,
        deleted,
    )
    return int(status.split()[-1])


async def _upsert_orders(conn: Connection, events: Iterable[Event]) -> int:
    ids: list[int] = []
    users: list[int | None] = []
    created: list[object] = []
    updated: list[object] = []
    versions: list[int] = []
    deleted: list[bool] = []
    for event in events:
        data = event.data
        assert isinstance(data, OrderData | OrderDeletedData)
        ids.append(event.aggregate_id)
        users.append(data.user_id)
        created.append(data.created_at)
        updated.append(data.updated_at)
        versions.append(event.aggregate_version)
        deleted.append(event.event_type == "order.deleted")
    status = await conn.execute(
        """INSERT INTO orders AS o (id, user_id, created_at, updated_at, version, known, deleted)
           SELECT i, u, c, m, v, true, d
           FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::integer[],
                       $6::boolean[]) AS t(i, u, c, m, v, d)
           ON CONFLICT (id) DO UPDATE SET
               user_id    = COALESCE(EXCLUDED.user_id, o.user_id),
               created_at = COALESCE(EXCLUDED.created_at, o.created_at),
               updated_at = COALESCE(EXCLUDED.updated_at, o.updated_at),
               version    = EXCLUDED.version,
               known      = true,
               deleted    = EXCLUDED.deleted
           WHERE o.version < EXCLUDED.version""",
        ids,
        users,
        created,
        updated,
        versions,
        deleted,
    )
    return int(status.split()[-1])
