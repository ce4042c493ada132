"""The projection: applies a batch of decoded events to the read model, set-based.

Events carry the entity's whole state, so a batch is first reduced to the newest
version of each entity; then one statement applies it, whatever its size:

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

The caller runs this in the same transaction that advances the consumer's
tracking records, so the read model is a deterministic function of the log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, Final

import orjson
import pydantic_core

from order_history.projection.columns import GOODS, ORDERS, Column, Entity, Kind
from shared.database import Connection
from shared.events import (
    CATALOGUE,
    Event,
    GoodsData,
    GoodsDeletedData,
    GoodsResyncedData,
    OrderData,
    OrderDeletedData,
    OrderResyncedData,
)


@dataclass
class ReducedBatch:
    orders: dict[int, Event] = field(default_factory=dict)
    goods: dict[int, Event] = field(default_factory=dict)
    # Goods whose goods.created event is in the batch: the read model has no row
    # for them, unless the event was delivered before (see `prepare`).
    created_goods: set[int] = field(default_factory=set)
    # Snapshots (*.resynced) that won their entity: applied by `apply_resynced`, not by the batch statement.
    resynced_orders: dict[int, Event] = field(default_factory=dict)
    resynced_goods: dict[int, Event] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.orders) + len(self.goods)

    @property
    def has_resynced(self) -> bool:
        return bool(self.resynced_orders or self.resynced_goods)


def reduce_events(events: Iterable[Event]) -> ReducedBatch:
    """Keep, per entity, the event with the highest aggregate_version (a snapshot wins a tie:
    it may be a repair of a row that claims its version); snapshots are then set apart."""
    batch = ReducedBatch()
    snapshots = False
    for event in events:
        kind = CATALOGUE[event.event_type]
        if kind.entity == "order":
            target = batch.orders
        else:
            target = batch.goods
            if kind.change == "created":
                batch.created_goods.add(event.aggregate_id)
        seen = target.get(event.aggregate_id)
        if (
            seen is None
            or event.aggregate_version > seen.aggregate_version
            or (kind.change == "resynced" and event.aggregate_version == seen.aggregate_version)
        ):
            target[event.aggregate_id] = event
        snapshots = snapshots or kind.change == "resynced"
    if snapshots:
        for source, resynced in ((batch.orders, batch.resynced_orders), (batch.goods, batch.resynced_goods)):
            for entity_id, event in list(source.items()):
                if CATALOGUE[event.event_type].change == "resynced":
                    resynced[entity_id] = source.pop(entity_id)
    return batch


@dataclass
class ApplyResult:
    orders_changed: int
    goods_changed: int


# The whole batch, in one statement. Each input is a set of arrays, one per
# column, sent as array literals (see _array). No
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
    bigint far faster than timestamptz text (`timestamptz_in` was 4% of the
    backend's time), and the statement got 9-12% faster (docs/benchmarks.md,
    sixth round). Seconds and microseconds are added separately because
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


def _array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of ints or booleans (None is NULL).

    orjson writes them as a JSON array: numbers and true/false/null, which is
    also PostgreSQL's array syntax once the brackets are braces. asyncpg's
    binary array encoding costs several times as much.
    """
    return "{" + orjson.dumps(values)[1:-1].decode() + "}"


_EPOCH_DAY: Final = dt.date(1970, 1, 1).toordinal()
# tzinfo classes whose utcoffset() is one fixed offset: the one pydantic decodes into, and the standard library's.
_FIXED_OFFSET_ZONES: Final = (pydantic_core.TzInfo, dt.timezone)


def _micros_array(values: Sequence[dt.datetime | None]) -> str:
    """A PostgreSQL array literal of microseconds since 1970-01-01 UTC (see _timestamp).

    A naive datetime is taken as UTC, as the consumer's session (timezone UTC) takes one.
    Computed from the fields, not as `(v - epoch) // 1 µs`, which asks the
    tzinfo pydantic decodes into for its offset through `datetime.utcoffset()`:
    1.9 µs per value against 1.0 here, and it was 15% of the consumer's own time
    (py-spy). A fixed-offset zone's offset does not depend on the date, so it is
    asked for without one.
    """
    out: list[int | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        us = ((v.toordinal() - _EPOCH_DAY) * 86400 + v.hour * 3600 + v.minute * 60 + v.second) * 1_000_000
        tz = v.tzinfo
        if tz is not None:
            offset = tz.utcoffset(None) if type(tz) in _FIXED_OFFSET_ZONES else v.utcoffset()
            if offset:
                us -= (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
        out.append(us + v.microsecond)
    return _array(out)


def _text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text: each element double-quoted, `\\` and `"` escaped."""
    return (
        "{"
        + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


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
        return replace(self, created=_array([False] * self.goods))


_GOODS_DATA: Final = (GoodsData, GoodsDeletedData)
_ORDER_DATA: Final = (OrderData, OrderDeletedData)
# Each column kind's array literal (see columns.Kind).
_ENCODERS: Final[dict[Kind, Callable[[Sequence[Any]], str]]] = {
    "int": _array,
    "text": _text_array,
    "time": _micros_array,
}


def _fields(entity: Entity) -> Callable[[Any], tuple[Any, ...]]:
    """The payload's values of the entity's columns, as a tuple (one C call per event)."""
    get = attrgetter(*entity.names)
    return get if len(entity.names) > 1 else lambda data: (get(data),)


_GOODS_FIELDS: Final = _fields(GOODS)
_ORDER_FIELDS: Final = _fields(ORDERS)


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """Rows of `width` values as `width` columns."""
    return list(zip(*rows, strict=True)) if rows else [()] * width


def _encoded(entity: Entity, rows: list[tuple[Any, ...]]) -> list[str]:
    """Rows of (id, columns..., version, deleted) as the batch statement's arrays, in BATCH_PARAMS order."""
    kinds: list[Kind] = ["int", *(c.kind for c in entity.columns), "int", "int"]
    return [_ENCODERS[kind](values) for kind, values in zip(kinds, _columns(rows, len(kinds)), strict=True)]


def prepare(batch: ReducedBatch, insert_created: bool = False) -> PreparedBatch:
    """The parameters of `_APPLY` for `batch`: pure Python, no database.

    `insert_created`: the goods created in the batch are written by a plain
    INSERT, which fails if the read model has one of those rows already.
    """
    goods = []  # one tuple per row, turned into one sequence per column by zip
    created = []
    for e in batch.goods.values():
        g = e.data
        assert isinstance(g, _GOODS_DATA)
        deleted = CATALOGUE[e.event_type].change == "deleted"
        goods.append((e.aggregate_id, *_GOODS_FIELDS(g), e.aggregate_version, deleted))
        created.append(insert_created and e.aggregate_id in batch.created_goods)
    orders = []
    for e in batch.orders.values():
        o = e.data
        assert isinstance(o, _ORDER_DATA)
        deleted = CATALOGUE[e.event_type].change == "deleted"
        orders.append((e.aggregate_id, *_ORDER_FIELDS(o), e.aggregate_version, deleted))
    params = (*_encoded(GOODS, goods), *_encoded(ORDERS, orders))
    return PreparedBatch(params, _array(created), len(batch), len(goods))


async def apply_prepared(conn: Connection, prepared: PreparedBatch) -> ApplyResult:
    """Apply a prepared batch; call inside a transaction."""
    row = await conn.fetchrow(_APPLY, *prepared.params)
    assert row is not None
    return ApplyResult(int(row["orders"]), int(row["goods"]))


async def apply_batch(conn: Connection, batch: ReducedBatch) -> ApplyResult:
    """Apply `batch`; call inside a transaction."""
    return await apply_prepared(conn, prepare(batch))


# Snapshots (*.resynced, written by `resync`), a few statements per part: rare
# repairs, not the hot path. Each overwrites a row whose version is not newer
# (`<=`: the row may wrongly claim the snapshot's version). One of an entity the
# command side does not have marks the row deleted at the snapshot's version, if
# the read model has it as created by its own events (a placeholder order may
# yet be created): GONE_VERSION for an id its service deleted, so nothing comes
# after it; for an id its service has not handed out yet, the version the row
# had, above which the service will start the entity it later creates there
# (shared/command/resync.py). Either way the row stays as a tombstone, and the version
# guard of every later event decides, as for a delete. goods_count is then
# recounted, not maintained, for every order they touch: a repaired row may
# have been counted wrongly before.
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


_RESYNC_GOODS = f"""WITH {_snapshot_input(GOODS)}, before AS (
    SELECT g.id, g.order_id FROM goods g JOIN s USING (id) WHERE NOT g.deleted
), written AS (
    {_snapshot_write(GOODS, "g", {"deleted": "false", "counted_in_before": "NULL"})}
    RETURNING g.id, g.order_id
), gone AS (
    UPDATE goods g SET deleted = true, version = s.version, counted_in_before = NULL
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
    UPDATE orders o SET deleted = true, version = s.version
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


async def apply_resynced(conn: Connection, batch: ReducedBatch) -> None:
    """Apply the batch's snapshots; call inside the transaction that applied the rest of it."""
    recount: set[int] = set()
    if batch.resynced_goods:
        rows: list[tuple[Any, ...]] = []
        for e in batch.resynced_goods.values():
            g = e.data
            assert isinstance(g, GoodsResyncedData)
            rows.append((e.aggregate_id, g.exists, *_GOODS_FIELDS(g), e.aggregate_version))
        named = await conn.fetchval(_RESYNC_GOODS, *_columns(rows, len(GOODS.columns) + 3))
        await conn.execute(_PLACEHOLDERS, named)
        recount.update(named)
    if batch.resynced_orders:
        rows = []
        for e in batch.resynced_orders.values():
            o = e.data
            assert isinstance(o, OrderResyncedData)
            rows.append((e.aggregate_id, o.exists, *_ORDER_FIELDS(o), e.aggregate_version))
        recount.update(await conn.fetchval(_RESYNC_ORDERS, *_columns(rows, len(ORDERS.columns) + 3)))
    if recount:
        ids = sorted(recount)
        await conn.execute(_LOCK_ORDERS, ids)
        await conn.execute(_RECOUNT, ids)
