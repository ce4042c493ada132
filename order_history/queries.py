"""Read-side SQL. Nothing here aggregates goods at request time.

The list query, `goods_count > N ORDER BY id LIMIT L OFFSET O`, is served by one
partial index on (goods_count_bucket(goods_count), id) INCLUDE (user_id,
created_at, goods_count) (migration 0002): within one bucket the index is already
in id order, so the query is a UNION ALL of one index range per bucket above N,
which PostgreSQL merges by id (Merge Append) and cuts at OFFSET + LIMIT rows.
For N < 40, the counts above the first tail T >= N (T in 10, 20, 30, 40) are one
more range, of the partial index orders_listed_over_T on (id) (migrations 0003
and 0006), instead of a bucket each: at most 11 ranges, and one alone when N is 10,
20 or 30. The bucket that holds N + 1 is filtered by `goods_count > N` when it
spans several counts. Cost: one index descent per range plus O + L entries
(and, in a wide boundary bucket, the entries below N it skips); independent of
the number of orders and goods.

Each statement's text depends only on the first bucket, so there are at most
BUCKETS of them; they run as prepared statements with generic plans (planned
once per connection), with sorting and parallel plans disabled for this pool so
that the merge is the plan PostgreSQL picks (see order_history/api.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from functools import cache

import asyncpg

from order_history import cursors
from order_history.cursors import After, fingerprint, micros
from order_history.schemas import GoodsItem, HistoryItem, OrderHistoryDetail
from shared.database import Connection

# Upper bounds (inclusive) of the buckets after the exact ones; mirrors the SQL
# function goods_count_bucket of migration 0002.
EXACT_BUCKETS = 40
_WIDE_UPPER = (48, 64, 96, 128, 192, 256, 512, 1024, 4096, 65536)
BUCKETS = EXACT_BUCKETS + len(_WIDE_UPPER) + 1
# Counts T with a partial index orders_listed_over_T of the orders above T, in id
# order (migrations 0003 and 0006).
TAILS = (10, 20, 30, EXACT_BUCKETS)

# Settings of the read API's connections (see module docstring).
SESSION_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_sort": "off",
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}


def bucket_of(count: int) -> int:
    """The bucket of a goods count (>= 1), as goods_count_bucket() in SQL."""
    if count <= EXACT_BUCKETS:
        return count
    for i, upper in enumerate(_WIDE_UPPER):
        if count <= upper:
            return EXACT_BUCKETS + 1 + i
    return BUCKETS


_LISTED = "known AND NOT deleted AND goods_count > 0"
_COLUMNS = "id, user_id, created_at, goods_count"
_BY_ID = "id"
_NEWEST_FIRST = "created_at DESC, id DESC"
_OLDEST_FIRST = "created_at, id"


@dataclass(frozen=True)
class ListQuery:
    """One page of GET /v1/order-history: filters, sort, and where the page starts."""

    threshold: int = 0
    limit: int = 50
    offset: int = 0
    user_id: int | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    newest_first: bool = False  # sort=-created_at; else by id ascending
    after: After | None = None  # the previous page's last row (a cursor)

    def fingerprint(self) -> bytes:
        """What a cursor of this query is bound to: everything but the page's position and size."""
        return fingerprint(
            self.threshold,
            self.user_id,
            None if self.created_from is None else micros(self.created_from),
            None if self.created_to is None else micros(self.created_to),
            self.newest_first,
        )


@dataclass(frozen=True)
class _Shape:
    """What the text of a list statement depends on (its parameters aside)."""

    first_bucket: int
    user: bool
    created_from: bool
    created_to: bool
    newest_first: bool
    after: bool  # a cursor (created_at sort) or a lower id bound (id sort)
    id_below: bool  # an upper id bound (id sort with created_to)


def _buckets(first_bucket: int, tails: bool) -> tuple[list[int], int | None]:
    """The buckets to merge from first_bucket on, and the tail whose index range ends the list (or None)."""
    tail = None
    if tails and first_bucket <= EXACT_BUCKETS:
        tail = next(t for t in TAILS if t >= first_bucket - 1)
    return list(range(first_bucket, (BUCKETS if tail is None else tail) + 1)), tail


def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """Replace {name} placeholders by $1, $2... in order of first use; the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"\{(\w+)\}", number, sql), tuple(names)


def _merge(branches: list[str], order: str, page: str) -> str:
    """The branches (each parenthesised and sorted by `order`) merged in that order, then cut to the page."""
    if len(branches) == 1:  # one range alone: no merge (and a second ORDER BY would be an error)
        return f"{branches[0][1:-1]}\n{page}"
    return "\nUNION ALL\n".join(branches) + f"\nORDER BY {order} {page}"


@cache
def _statement(shape: _Shape) -> tuple[str, tuple[str, ...]]:
    """The list statement of one shape, and the names of its parameters in order.

    Every branch is one index range in the page's order (see the module
    docstring): a bucket of (goods_count_bucket, id), a tail of (id), or, with a
    user or the created_at sort, a bucket of the indexes of migration 0008.
    """
    order = _NEWEST_FIRST if shape.newest_first else _BY_ID
    common = [_LISTED]
    if shape.user:
        common.append("user_id = {user_id}")
    if shape.created_from:
        common.append("created_at >= {created_from}")
    if shape.created_to:
        common.append("created_at < {created_to}")
    if shape.after and shape.newest_first:
        common.append("(created_at, id) < ({after_at}, {after_id})")
    elif shape.after:
        common.append("id >= {id_from}")
    if shape.id_below:
        common.append("id <= {id_to}")
    buckets, tail = _buckets(shape.first_bucket, tails=not (shape.user or shape.newest_first))
    where = " AND ".join(common)
    branches = [
        f"(SELECT {_COLUMNS} FROM orders WHERE {where} AND goods_count_bucket(goods_count) = {b}"
        + (" AND goods_count > {threshold}" if b == shape.first_bucket else "")
        + f" ORDER BY {order})"
        for b in buckets
    ]
    if tail is not None:
        branches.append(f"(SELECT {_COLUMNS} FROM orders WHERE {where} AND goods_count > {tail} ORDER BY {order})")
    return _numbered(_merge(branches, order, "LIMIT {limit} OFFSET {offset}"))


@cache
def _edges_statement(
    first_bucket: int, user: bool, created_from: bool, created_to: bool
) -> tuple[str, tuple[str, ...]]:
    """The ids bounding a created_at range in id order: see `_id_bounds`."""
    listed = _LISTED + (" AND user_id = {user_id}" if user else "")
    buckets, _ = _buckets(first_bucket, tails=False)

    def nearest(condition: str, order: str) -> str:
        branches = [
            f"(SELECT id, created_at FROM orders WHERE {listed} AND {condition}"
            f" AND goods_count_bucket(goods_count) = {b}"
            + (" AND goods_count > {threshold}" if b == first_bucket else "")
            + f" ORDER BY {order})"
            for b in buckets
        ]
        return f"(SELECT id FROM ({_merge(branches, order, 'LIMIT 1')}) edge)"

    lower = nearest("created_at < {before}", _NEWEST_FIRST) if created_from else "NULL::bigint"
    upper = nearest("created_at >= {after}", _OLDEST_FIRST) if created_to else "NULL::bigint"
    return _numbered(f"SELECT {lower} AS below, {upper} AS above")


def _shifted(at: dt.datetime | None, by: dt.timedelta) -> dt.datetime | None:
    """at + by, or None when there is no such time (then no order lies beyond it either)."""
    if at is None:
        return None
    try:
        return at + by
    except OverflowError:
        return None


async def _id_bounds(conn: Connection, q: ListQuery, skew: dt.timedelta) -> tuple[int | None, int | None]:
    """Ids outside which no order of a created_at range lies, for the id sort.

    Ids and created_at come from one statement of the order service, so they
    disagree only between orders created at the same moment: an order created
    more than `skew` after another has the greater id (the creation skew, a
    setting). Then the last order created before created_from - skew has a
    smaller id than every order of the range, and the first one created at or
    after created_to + skew a greater one: the page is the id range between them
    with created_at as a filter, which skips only the orders created within
    `skew` of the range's start. Both are looked up among the orders the page
    could list (same user and counts): their own created_at index ranges.
    """
    before = _shifted(q.created_from, -skew)
    after = _shifted(q.created_to, skew)
    if before is None and after is None:
        return None, None
    sql, names = _edges_statement(
        bucket_of(q.threshold + 1), q.user_id is not None, before is not None, after is not None
    )
    values = {"threshold": q.threshold, "user_id": q.user_id, "before": before, "after": after}
    row = await conn.fetchrow(sql, *(values[n] for n in names))
    assert row is not None
    below, above = row["below"], row["above"]
    return (None if below is None else below + 1), (None if above is None else above - 1)


async def list_rows(
    conn: Connection, q: ListQuery, skew: dt.timedelta = dt.timedelta(seconds=5)
) -> list[asyncpg.Record]:
    """One page of the list: rows (id, user_id, created_at, goods_count) in the query's order.

    At most `q.limit` rows; the caller asks for one more than it shows to know
    whether a next page exists.
    """
    id_from = id_to = None
    if not q.newest_first:
        if q.created_from is not None or q.created_to is not None:
            id_from, id_to = await _id_bounds(conn, q, skew)
        if q.after is not None:
            id_from = max(id_from or 0, q.after.id + 1)
    shape = _Shape(
        first_bucket=bucket_of(q.threshold + 1),
        user=q.user_id is not None,
        created_from=q.created_from is not None,
        created_to=q.created_to is not None,
        newest_first=q.newest_first,
        after=q.after is not None if q.newest_first else id_from is not None,
        id_below=id_to is not None,
    )
    sql, names = _statement(shape)
    values: dict[str, object] = {
        "limit": q.limit,
        "offset": q.offset,
        "threshold": q.threshold,
        "user_id": q.user_id,
        "created_from": q.created_from,
        "created_to": q.created_to,
        "after_at": None if q.after is None else q.after.created_at,
        "after_id": None if q.after is None else q.after.id,
        "id_from": id_from,
        "id_to": id_to,
    }
    return await conn.fetch(sql, *(values[n] for n in names))


def merge_query(first_bucket: int) -> str:
    """The statement of the original query (threshold, limit, offset by id) whose counts start at first_bucket."""
    return _statement(_Shape(first_bucket, False, False, False, False, False, False))[0]


async def list_page(
    conn: Connection, q: ListQuery, cursor_key: bytes, skew: dt.timedelta
) -> tuple[list[HistoryItem], str | None]:
    """A page of the list and the cursor of the next one (None on the last page)."""
    rows = await list_rows(conn, replace(q, limit=q.limit + 1), skew)
    items = [
        HistoryItem(id=r["id"], user_id=r["user_id"], created_at=r["created_at"], goods_count=r["goods_count"])
        for r in rows[: q.limit]
    ]
    if len(rows) <= q.limit:
        return items, None
    last = items[-1]
    after = After(id=last.id, created_at=last.created_at if q.newest_first else None)
    return items, cursors.encode(cursor_key, q.fingerprint(), after)


async def order_detail(conn: Connection, order_id: int) -> OrderHistoryDetail | None:
    order = await conn.fetchrow(
        "SELECT id, user_id, created_at, updated_at, goods_count FROM orders WHERE id = $1 AND known AND NOT deleted",
        order_id,
    )
    if order is None:
        return None
    goods = await conn.fetch(
        "SELECT id, name, created_at FROM goods WHERE order_id = $1 AND NOT deleted ORDER BY id", order_id
    )
    return OrderHistoryDetail(
        id=order["id"],
        user_id=order["user_id"],
        created_at=order["created_at"],
        updated_at=order["updated_at"],
        goods_count=order["goods_count"],
        goods=[GoodsItem(id=g["id"], name=g["name"], created_at=g["created_at"]) for g in goods],
    )
