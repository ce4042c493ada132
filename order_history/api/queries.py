"""Read-side SQL. Nothing here aggregates goods at request time.

Every list statement is a merge of index ranges, one per goods-count band above
the threshold N (`band`, a stored goods_count_band(goods_count): 12 bands,
migrations 0008 and 0009). Within one band an index is already in the page's
order, so the statement is a UNION ALL of one index range per band, which
PostgreSQL merges in that order (Merge Append) and cuts at OFFSET + LIMIT rows.
When the band that holds N + 1 also holds counts at or below N, it is filtered
by `goods_count > N`, read from the table (no index names goods_count, so that
most count changes are HOT updates: see migration 0009). Which index serves
which combination:

| user_id | created range | sort        | read                                                        |
|---------|---------------|-------------|-------------------------------------------------------------|
| none    | none          | id          | orders_listed_by_band, by id                                |
| none    | any           | -created_at | orders_listed_by_created, backwards from the cursor / range |
| none    | given         | id          | orders_listed_by_created, a window sorted by id (below)     |
| given   | any           | -created_at | orders_listed_by_user_created, backwards                    |
| given   | any           | id          | orders_listed_by_user_created, a window sorted by id        |

The ranges read index entries only (index-only scans: each list index holds
the sort keys of the pages it serves); the page's L rows are then read by id. So the cost is one
index descent per band plus O + L index entries and L rows (and, in a boundary
band that also holds counts at or below N, the rows it skips, read for their
goods_count); independent of the number of orders and goods. A cursor
continues strictly after its row's key ((created_at, id) < key, or id > key),
so its page costs the same at any depth; OFFSET costs O + L entries.

Each statement's text depends only on its shape (first band, which filters,
the order); they run as prepared statements with generic plans (planned once
per connection), with sorts, hash and merge joins and parallel plans disabled
for this pool so that the merge and the nested loop are the plan PostgreSQL
picks (see order_history/api/app.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Final, Literal

import asyncpg

from order_history.api import cursors
from order_history.api.cursors import After, fingerprint, micros
from order_history.api.schemas import GoodsItem, HistoryItem, OrderHistoryDetail
from shared.database import Connection
from shared.migrations import MIGRATIONS_ROOT


def _band_uppers(migration: Path) -> tuple[int, ...]:
    """The bands' upper bounds (inclusive), but the last's, read from goods_count_band() where the
    migration defines it: the bands are stated once, in SQL. Its CASE is `WHEN n <= X THEN band`,
    the band a number or `n` itself."""
    sql = migration.read_text()
    body = sql[sql.index("CREATE FUNCTION goods_count_band") :]
    cases = [(int(x), then) for x, then in re.findall(r"WHEN n <= (\d+) THEN (\w+)", body[: body.index("END")])]

    def band(n: int) -> str:
        return next((str(n) if then == "n" else then for x, then in cases if n <= x), "last")

    return tuple(n for n in range(1, cases[-1][0] + 1) if band(n) != band(n + 1))


# Upper bounds (inclusive) of the bands of goods_count_band (migration 0008), but the last.
BAND_UPPER: Final = _band_uppers(MIGRATIONS_ROOT / "order_history" / "0008_user_and_created_indexes.sql")
BANDS: Final = len(BAND_UPPER) + 1

# Settings of the read API's connections (see module docstring).
SESSION_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_sort": "off",
    # A generic plan does not know the LIMIT, and may join the page's keys to
    # their rows by a merge join that walks the primary key from its start (a
    # deep cursor then costs its depth) or by a hash join that reads the table:
    # the nested loop, one primary-key lookup per row of the page, is left.
    "enable_mergejoin": "off",
    "enable_hashjoin": "off",
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}


_LISTED = "known AND NOT deleted AND band > 0"
_COLUMNS = "id, user_id, created_at, goods_count"
_BY_ID = "id"
_NEWEST_FIRST = "created_at DESC, id DESC"
_OLDEST_FIRST = "created_at, id"
# What a page's order needs of an index entry (each list index holds those of the pages it serves).
_KEYS = {_BY_ID: "id", _NEWEST_FIRST: "created_at, id", _OLDEST_FIRST: "created_at, id"}


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

    first: int  # the first band above the threshold: band_of(threshold + 1)
    user: bool = False
    created_from: bool = False  # created_at >= {created_from}
    created_to: bool = False  # created_at < {created_to}
    created_upto: bool = False  # created_at <= {created_upto} (the window's end)
    after: bool = False  # strictly after the cursor's row in the statement's order
    order: str = _BY_ID  # the order of the rows: _BY_ID, _NEWEST_FIRST or _OLDEST_FIRST
    page: str = "LIMIT {limit} OFFSET {offset}"
    filtered: bool = True  # the first band holds counts at or below the threshold: goods_count > {threshold}
    select: Literal["joined", "keys", "rows"] = "joined"  # keys cut to the page, then rows by id; keys; rows


def band_of(count: int) -> int:
    """The band of a goods count (>= 1), as goods_count_band() in SQL (migration 0008)."""
    return next((i + 1 for i, upper in enumerate(BAND_UPPER) if count <= upper), BANDS)


def _first_band(threshold: int) -> tuple[int, bool]:
    """The first band above a threshold, and whether it also holds counts at or below it (then filtered)."""
    first = band_of(threshold + 1)
    lowest = 1 if first == 1 else BAND_UPPER[first - 2] + 1
    return first, threshold + 1 > lowest


def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """Replace {name} placeholders by $1, $2... in order of first use; the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"\{(\w+)\}", number, sql), tuple(names)


@cache
def _statement(shape: _Shape) -> tuple[str, tuple[str, ...]]:
    """The statement of one shape, and the names of its parameters in order.

    Every branch is one band's index range in the statement's order: of
    orders_listed_by_band (by id, no user), orders_listed_by_created (by
    created_at, no user) or orders_listed_by_user_created (a user's, by
    created_at); the branches are merged in that order (Merge Append) and cut
    to the page. The branches read only the index's keys (index-only scans),
    except in a first band that is filtered by goods_count; with
    select="joined" the rows of the page alone are then read by id, so that
    the rows an OFFSET skips cost an index entry each, not a row.
    """
    conditions = [_LISTED]
    if shape.user:
        conditions.append("user_id = {user_id}")
    if shape.created_from:
        conditions.append("created_at >= {created_from}")
    if shape.created_to:
        conditions.append("created_at < {created_to}")
    if shape.created_upto:
        conditions.append("created_at <= {created_upto}")
    if shape.after:
        conditions.append(
            {
                _BY_ID: "id > {after_id}",
                # The cursor's time as text: asyncpg sends the ends of a datetime's range as -infinity and
                # infinity, which differ from the rows at those times, so a walk would loop or stop there.
                _NEWEST_FIRST: "(created_at, id) < ({after_at}::text::timestamptz, {after_id})",
                _OLDEST_FIRST: "id > {after_id}",  # the window of the id sort: see _window_rows
            }[shape.order]
        )
    where = " AND ".join(conditions)
    columns = _COLUMNS if shape.select == "rows" else _KEYS[shape.order]
    branches = [
        f"(SELECT {columns} FROM orders WHERE {where} AND band = {band}"
        + (" AND goods_count > {threshold}" if band == shape.first and shape.filtered else "")
        + f" ORDER BY {shape.order})"
        for band in range(shape.first, BANDS + 1)
    ]
    if len(branches) == 1:  # one range alone: no merge (and a second ORDER BY would be an error)
        merged = f"{branches[0][1:-1]}\n{shape.page}"
    else:
        merged = "\nUNION ALL\n".join(branches) + f"\nORDER BY {shape.order} {shape.page}"
    if shape.select != "joined":
        return _numbered(merged)
    # A nested loop over the page's keys keeps their order: no sort.
    outer_order = ", ".join(f"page.{key}" for key in shape.order.split(", "))
    return _numbered(
        f"SELECT {', '.join(f'o.{c}' for c in _COLUMNS.split(', '))}\nFROM ({merged}) AS page\n"
        f"JOIN orders AS o ON o.id = page.id\nORDER BY {outer_order}"
    )


def _later(at: dt.datetime | None, by: dt.timedelta) -> dt.datetime | None:
    """at + by; None (no bound) when there is no such time."""
    if at is None:
        return None
    try:
        return at + by
    except OverflowError:
        return None


async def _run(conn: Connection, shape: _Shape, values: dict[str, object]) -> list[asyncpg.Record]:
    sql, names = _statement(shape)
    return await conn.fetch(sql, *(values[n] for n in names))


async def _window_rows(conn: Connection, q: ListQuery, skew: dt.timedelta) -> list[asyncpg.Record]:
    """The id sort of a user's orders or of a created_at range, from an index by created_at.

    Ids and created_at come from one statement of the order service, so they
    disagree only between orders created at about the same moment: an order
    created more than `skew` (the creation skew setting) after another has the
    greater id. Hence, of the rows in created_at order, the n = offset + limit
    smallest ids are among the rows created at most `skew` after the n-th one:
    that window is read in created_at order (from created_at - skew of the
    cursor's row, for the same reason) and sorted here. Cost: the page plus the
    orders created within `skew` of its ends.
    """
    first, filtered = _first_band(q.threshold)
    shape = _Shape(
        first=first,
        filtered=filtered,
        user=q.user_id is not None,
        created_to=q.created_to is not None,
        after=q.after is not None,
        order=_OLDEST_FIRST,
        select="keys",
    )
    start = q.created_from
    if q.after is not None:
        hint = _later(q.after.created_at, -skew)
        if hint is not None and (start is None or hint > start):
            start = hint
    shape = replace(shape, created_from=start is not None)
    values: dict[str, object] = {
        "threshold": q.threshold,
        "user_id": q.user_id,
        "created_from": start,
        "created_to": q.created_to,
        "after_id": None if q.after is None else q.after.id,
        "n": q.offset + q.limit - 1,
    }
    edge = await _run(conn, replace(shape, page="OFFSET {n} LIMIT 1"), values)
    upto = _later(edge[0]["created_at"], skew) if edge else None
    if upto is not None:
        shape = replace(shape, created_upto=True)
        values["created_upto"] = upto
    # The window's rows in one statement (a later one could miss a row deleted meanwhile and end the walk).
    rows = await _run(conn, replace(shape, page="", select="rows"), values)
    rows.sort(key=lambda r: r["id"])
    return rows[q.offset : q.offset + q.limit]


async def list_rows(conn: Connection, q: ListQuery, skew: dt.timedelta) -> list[asyncpg.Record]:
    """One page of the list: rows (id, user_id, created_at, goods_count) in the query's order.

    `skew`: the creation skew setting (see _window_rows).

    At most `q.limit` rows; the caller asks for one more than it shows to know
    whether a next page exists.
    """
    windowed = q.user_id is not None or q.created_from is not None or q.created_to is not None
    if not q.newest_first and windowed:
        return await _window_rows(conn, q, skew)
    order = _NEWEST_FIRST if q.newest_first else _BY_ID
    first, filtered = _first_band(q.threshold)
    shape = _Shape(
        first=first,
        filtered=filtered,
        user=q.user_id is not None,
        created_from=q.created_from is not None,
        created_to=q.created_to is not None,
        after=q.after is not None,
        order=order,
    )
    values: dict[str, object] = {
        "limit": q.limit,
        "offset": q.offset,
        "threshold": q.threshold,
        "user_id": q.user_id,
        "created_from": q.created_from,
        "created_to": q.created_to,
        "after_at": None if q.after is None else q.after.created_at.isoformat(),
        "after_id": None if q.after is None else q.after.id,
    }
    return await _run(conn, shape, values)


def merge_query(threshold: int) -> str:
    """The statement of the original query (threshold, limit, offset by id)."""
    first, filtered = _first_band(threshold)
    return _statement(_Shape(first, filtered=filtered))[0]


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
    return items, cursors.encode(cursor_key, q.fingerprint(), After(id=last.id, created_at=last.created_at))


# A page of an order's live goods, by id after $2, at most $3: one range of the index goods_live_by_order
# (order_id, id) WHERE NOT deleted (migration 0001), so its cost is the page's, however many goods the order has.
# The goods fields the detail shows are GoodsItem's: read-model columns of the same names.
GOODS_PAGE = (
    f"SELECT {', '.join(GoodsItem.model_fields)} FROM goods"
    " WHERE order_id = $1 AND NOT deleted AND id > $2 ORDER BY id LIMIT $3"
)


async def order_detail(
    conn: Connection, order_id: int, goods_limit: int, goods_after: int
) -> OrderHistoryDetail | None:
    """An order and one page of its live goods: the first `goods_limit` with an id above `goods_after` (0: from
    the first); `goods_next` names the page's last id if more follow."""
    order = await conn.fetchrow(
        "SELECT id, user_id, created_at, updated_at, goods_count FROM orders WHERE id = $1 AND known AND NOT deleted",
        order_id,
    )
    if order is None:
        return None
    # One more than the page shows: whether a next page exists.
    goods = await conn.fetch(GOODS_PAGE, order_id, goods_after, goods_limit + 1)
    page = goods[:goods_limit]
    return OrderHistoryDetail(
        id=order["id"],
        user_id=order["user_id"],
        created_at=order["created_at"],
        updated_at=order["updated_at"],
        goods_count=order["goods_count"],
        goods=[GoodsItem(**dict(g.items())) for g in page],
        goods_next=page[-1]["id"] if len(goods) > goods_limit else None,
    )
