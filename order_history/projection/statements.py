"""The projection: applies a batch of decoded events to the read model, set-based.

Events carry the entity's whole state, so a batch is first reduced to the newest
version of each entity (reduce.py); then one statement applies it, whatever its
size (snapshots, `*.resynced`, are applied beside it: snapshots.py):

1. upsert goods, guarded by `stored.version < event.version`: a duplicate, or
   an older version arriving late, changes nothing, and a deleted entity is a
   tombstone that remembers its version;
2. from the goods rows it changed, before and after, the change of each order's
   count of live goods (+1 for goods now live in it, -1 for goods that were);
3. upsert every order the batch touches, in id order: the order events' state
   under the same version guard (a deleted order is a tombstone too), and
   goods_count plus its change. An order never seen is inserted whole from its
   event, or as a placeholder (known = false) when goods name it first.

goods_count is maintained, not recounted: it changes only here, in the same
transaction as the goods rows it counts, so it always equals the number of live
goods naming the order (the integration tests compare it with a recount). The
cost of a batch depends on the batch, not on the size of the tables.

Goods rows are not locked separately: every event of one goods item is in one
partition (keyed by its id), and the caller holds that partition's position row
locked for the whole transaction, so no other transaction writes those rows and
the statement's snapshot of them is their latest state. Order rows are shared by
goods of every partition: the upsert locks them in id order, and adds its change
to the latest row version, so concurrent consumers neither deadlock nor lose a
count.

Each row written records where the event that wrote it was read (its
partition and offset: columns.SOURCE), from the positions the caller gave
`reduce_events`: two more arrays per entity in the same statement.

The caller runs this in the same transaction that advances the consumer's
tracking records, so the read model is a deterministic function of the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from order_history.projection.columns import GOODS, ORDERS, Column, Entity, Kind
from order_history.projection.encoders import ENCODERS, as_columns, int_array, payload_fields
from order_history.projection.encoders import micros_array as _micros_array
from order_history.projection.reduce import ReducedBatch, reduce_events
from order_history.projection.snapshots import apply_resynced
from shared.database import Connection
from shared.events import CATALOGUE, GoodsData, GoodsDeletedData, OrderData, OrderDeletedData

# Also the names of reduce.py and snapshots.py that callers import from here (and an encoder its tests do).
__all__ = [
    "BATCH_PARAMS",
    "ApplyResult",
    "PreparedBatch",
    "ReducedBatch",
    "_micros_array",
    "apply_batch",
    "apply_prepared",
    "apply_resynced",
    "apply_sql",
    "numbered",
    "prepare",
    "reduce_events",
]


@dataclass
class ApplyResult:
    orders_changed: int
    goods_changed: int


# The whole batch, in one statement. Each input is a set of arrays, one per
# column, sent as array literals (see encoders.py). No
# step scans a table: rows are reached by primary key, so the cost of a batch
# does not grow with the tables.
#
# - inserted: goods created in this batch, by a plain INSERT. ON CONFLICT first
#   probes the primary key for every row, and that probe was a fifth of the
#   database's time; a new row needs none (the insert itself still refuses a
#   duplicate id). Only the caller's one-statement path asks for this: if the
#   goods.created was delivered before, the statement fails whole and the batch
#   is applied by upserts only (`PreparedBatch.upserts_only`);
# - upserted: other goods, newest version wins (a duplicate or a stale version is
#   not returned). An updated row records the order it was counted in before
#   (counted_in_before, migration 0004), since RETURNING shows only the new row;
# - deltas: per order, +1 for each changed goods item now live in it, -1 for each
#   that was live in it before the change (a move is -1 and +1, a delete -1).
#   An order whose goods changed but not their number (a rename) is left out:
#   the orders upsert would lock its row only to change nothing. Such an order
#   has a row already, since a goods item was counted in it;
# - the orders upsert: the order events' state (newest version wins, deleted is a
#   tombstone) and goods_count += delta, in id order. An order the read model has
#   no row for is inserted whole, or as a placeholder (known = false) when goods
#   name it before its own event; its count starts from the delta, since no goods
#   can have named it before (every goods write makes sure its order has a row).
#   ON CONFLICT DO UPDATE locks each row it meets, in input (id) order, so
#   concurrent consumers take order rows in one order and add their deltas to
#   the latest row version: increments commute, no count is lost.
def _timestamp(micros: str) -> str:
    """SQL for the timestamptz `micros` microseconds after 1970-01-01 UTC, exactly.

    Timestamps travel as microseconds since the epoch: PostgreSQL parses a
    bigint far faster than timestamptz text (the figures: docs/benchmarks.md,
    History). Seconds and microseconds are added separately because
    interval multiplication goes through a double, which holds every count of
    seconds exactly, and a count of microseconds only within about 285 years of
    1970.
    """
    return (
        f"timestamptz 'epoch' + ({micros} / 1000000) * interval '1 second'"
        f" + ({micros} % 1000000) * interval '1 microsecond'"
    )


def _rule(column: Column, stored: str) -> str:
    """SQL for the value an upsert writes to `column` over the `stored` row (see columns.Rule)."""
    new, old = f"EXCLUDED.{column.name}", f"{stored}.{column.name}"
    if column.rule == "keep_on_delete":
        return f"CASE WHEN EXCLUDED.deleted THEN {old} ELSE {new} END"
    if column.rule == "keep_if_absent":
        return f"COALESCE({new}, {old})"
    return new


def _input(entity: Entity, extra: tuple[tuple[str, str], ...]) -> str:
    """The CTE body that turns an entity's parameter arrays into rows (timestamps from microseconds):
    id, its columns, version, deleted, then `extra` (name, SQL type) columns."""
    p = entity.param
    arrays = [
        (f"{{{p('id')}}}", "bigint", "id", "id"),
        *[
            (
                f"{{{p(c.name)}}}",
                c.array_type,
                f"{c.name}_us" if c.kind == "time" else c.name,
                f"{_timestamp(c.name + '_us')} AS {c.name}" if c.kind == "time" else c.name,
            )
            for c in entity.columns
        ],
        (f"{{{p('version')}}}", "integer", "version", "version"),
        (f"{{{p('deleted')}}}", "boolean", "deleted", "deleted"),
        *[(f"{{{p(name)}}}", sql_type, name, name) for name, sql_type in extra],
    ]
    unnest = ", ".join(f"{param}::text::{sql_type}[]" for param, sql_type, _, _ in arrays)
    return (
        f"SELECT {', '.join(out for *_, out in arrays)}\n"
        f"    FROM unnest({unnest})\n"
        f"        AS t({', '.join(name for _, _, name, _ in arrays)})\n"
        "    WHERE {guard}"
    )


_G_COLUMNS = ", ".join(GOODS.names)
_O_COLUMNS = ", ".join(ORDERS.names)
_G_SET = ", ".join(f"{c.name} = {_rule(c, 'g')}" for c in GOODS.columns)
# An order's row also changes for its goods count alone: its columns only under the version guard.
_O_SET = ", ".join(
    f"{c.name} = CASE WHEN o.version < EXCLUDED.version THEN {_rule(c, 'o')} ELSE o.{c.name} END"
    for c in ORDERS.columns
)
_APPLY_CTES = f"""g_in AS (
    {_input(GOODS, (("created", "boolean"),))}
), inserted AS (
    INSERT INTO goods (id, {_G_COLUMNS}, version, deleted)
    SELECT id, {_G_COLUMNS}, version, deleted FROM g_in WHERE created
    RETURNING order_id, deleted, counted_in_before
), upserted AS (
    INSERT INTO goods AS g (id, {_G_COLUMNS}, version, deleted)
    SELECT id, {_G_COLUMNS}, version, deleted FROM g_in WHERE NOT created
    ON CONFLICT (id) DO UPDATE SET
        {_G_SET},
        version    = EXCLUDED.version,
        deleted    = EXCLUDED.deleted,
        counted_in_before = CASE WHEN g.deleted THEN NULL ELSE g.order_id END
    WHERE g.version < EXCLUDED.version
    RETURNING g.order_id, g.deleted, g.counted_in_before
), changed AS (
    SELECT * FROM inserted UNION ALL SELECT * FROM upserted
), deltas AS (
    SELECT order_id, sum(d)::integer AS d FROM (
        SELECT order_id, 1 AS d FROM changed WHERE NOT deleted
        UNION ALL
        SELECT counted_in_before, -1 FROM changed WHERE counted_in_before IS NOT NULL
    ) AS x
    GROUP BY order_id
    HAVING sum(d) <> 0
), o_in AS (
    {_input(ORDERS, ())}
), orders_upserted AS (
    INSERT INTO orders AS o (id, {_O_COLUMNS}, version, known, deleted, goods_count)
    SELECT COALESCE(o_in.id, deltas.order_id), {", ".join(f"o_in.{n}" for n in ORDERS.names)},
           COALESCE(o_in.version, 0), o_in.id IS NOT NULL, COALESCE(o_in.deleted, false), COALESCE(deltas.d, 0)
    FROM o_in FULL JOIN deltas ON deltas.order_id = o_in.id
    ORDER BY 1
    ON CONFLICT (id) DO UPDATE SET
        {_O_SET},
        known       = o.known OR o.version < EXCLUDED.version,
        deleted     = CASE WHEN o.version < EXCLUDED.version THEN EXCLUDED.deleted ELSE o.deleted END,
        version     = GREATEST(o.version, EXCLUDED.version),
        goods_count = o.goods_count + EXCLUDED.goods_count
    WHERE o.version < EXCLUDED.version OR EXCLUDED.goods_count <> 0
    RETURNING 1
)"""


def _params(entity: Entity) -> tuple[str, ...]:
    return tuple(entity.param(name) for name in ("id", *entity.names, "version", "deleted"))


# The batch statement's parameters, by name, in the order a PreparedBatch gives them.
BATCH_PARAMS: Final = (*_params(GOODS), *_params(ORDERS), GOODS.param("created"))
_COUNTS = "(SELECT count(*) FROM orders_upserted) AS orders, (SELECT count(*) FROM changed) AS goods"


def numbered(template: str, names: Sequence[str], **text: str) -> str:
    """`template` with each `{name}` of `names` as its positional parameter ($1 for the first, ...)
    and the other `{key}`s as `text`: statements are written with names, sent with numbers."""
    return template.format(**{name: f"${i}" for i, name in enumerate(names, start=1)}, **text)


def apply_sql(before: str = "", guard: str = "true", select: str = "", params: Sequence[str] = ()) -> str:
    """The batch statement, its parameters BATCH_PARAMS then `params`; with CTEs of the caller's
    `before` it, applied only where `guard` (an SQL condition over those CTEs) holds, and
    `select` added to its result row. `before`, `guard` and `select` may name any parameter."""
    with_before = f"{before},\n" if before else ""
    result = f"{select}, " if select else ""
    template = f"WITH {with_before}{_APPLY_CTES}\nSELECT {result}{_COUNTS}"
    return numbered(template, (*BATCH_PARAMS, *params), guard=guard)


_APPLY = apply_sql()


@dataclass(frozen=True)
class PreparedBatch:
    """A reduced batch as the statement's parameters, built ahead of the transaction."""

    columns: tuple[str, ...]  # BATCH_PARAMS but the last
    created: str  # g_created: per goods row, whether it is written by a plain INSERT
    entities: int
    goods: int

    @property
    def params(self) -> tuple[str, ...]:
        return (*self.columns, self.created)

    def __len__(self) -> int:
        return self.entities

    def upserts_only(self) -> PreparedBatch:
        """The same batch with every goods row upserted: for when a goods.created
        of it may have been applied before (a redelivery)."""
        return replace(self, created=int_array([False] * self.goods))


_GOODS_DATA: Final = (GoodsData, GoodsDeletedData)
_ORDER_DATA: Final = (OrderData, OrderDeletedData)
_NO_SOURCE: Final[tuple[None, None]] = (None, None)
_GOODS_FIELDS: Final = payload_fields(GOODS)
_ORDER_FIELDS: Final = payload_fields(ORDERS)


def _encoded(entity: Entity, rows: list[tuple[Any, ...]]) -> list[str]:
    """Rows of (id, columns..., version, deleted) as the batch statement's arrays, in BATCH_PARAMS order."""
    kinds: list[Kind] = ["int", *(c.kind for c in entity.columns), "int", "int"]
    return [ENCODERS[kind](values) for kind, values in zip(kinds, as_columns(rows, len(kinds)), strict=True)]


def prepare(batch: ReducedBatch, insert_created: bool = False) -> PreparedBatch:
    """The parameters of `_APPLY` for `batch`: pure Python, no database.

    `insert_created`: the goods created in the batch are written by a plain
    INSERT, which fails if the read model has one of those rows already.
    """
    goods = []  # one tuple per row, turned into one sequence per column by zip
    created = []
    source = batch.goods_sources.get
    for e in batch.goods.values():
        g = e.data
        assert isinstance(g, _GOODS_DATA)
        deleted = CATALOGUE[e.event_type].change == "deleted"
        at = source(e.aggregate_id, _NO_SOURCE)
        goods.append((e.aggregate_id, *_GOODS_FIELDS(g), *at, e.aggregate_version, deleted))
        created.append(insert_created and e.aggregate_id in batch.created_goods)
    orders = []
    source = batch.order_sources.get
    for e in batch.orders.values():
        o = e.data
        assert isinstance(o, _ORDER_DATA)
        deleted = CATALOGUE[e.event_type].change == "deleted"
        at = source(e.aggregate_id, _NO_SOURCE)
        orders.append((e.aggregate_id, *_ORDER_FIELDS(o), *at, e.aggregate_version, deleted))
    params = (*_encoded(GOODS, goods), *_encoded(ORDERS, orders))
    return PreparedBatch(params, int_array(created), len(batch), len(goods))


async def apply_prepared(conn: Connection, prepared: PreparedBatch) -> ApplyResult:
    """Apply a prepared batch; call inside a transaction."""
    row = await conn.fetchrow(_APPLY, *prepared.params)
    assert row is not None
    return ApplyResult(int(row["orders"]), int(row["goods"]))


async def apply_batch(conn: Connection, batch: ReducedBatch) -> ApplyResult:
    """Apply `batch`; call inside a transaction."""
    return await apply_prepared(conn, prepare(batch))
