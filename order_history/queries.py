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

from functools import cache

import asyncpg

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


@cache
def merge_query(first_bucket: int) -> str:
    """SQL with $1 = limit, $2 = offset, $3 = threshold; counts from first_bucket's on.

    Each branch is a parenthesised, id-ordered subquery: that is the form for which
    PostgreSQL 15 plans a Merge Append of the branches (a plain UNION ALL under
    an outer ORDER BY gets an Append and a Sort of every matching row).
    """
    # Within the exact buckets (first_bucket = N + 1): the buckets up to the first
    # tail T >= N, then T's index range. Above them: every wide bucket from the
    # first on (the statement serves every N whose N + 1 falls in first_bucket).
    tail = next((t for t in TAILS if t >= first_bucket - 1), None) if first_bucket <= EXACT_BUCKETS else None
    last = BUCKETS if tail is None else tail
    branches = [
        f"(SELECT {_COLUMNS} FROM orders WHERE {_LISTED} AND goods_count_bucket(goods_count) = {b}"
        + (" AND goods_count > $3" if b == first_bucket else "")
        + " ORDER BY id)"
        for b in range(first_bucket, last + 1)
    ]
    if tail is not None:
        branches.append(f"(SELECT {_COLUMNS} FROM orders WHERE {_LISTED} AND goods_count > {tail} ORDER BY id)")
    if len(branches) == 1:  # one range alone: no merge (and a second ORDER BY would be an error)
        return f"{branches[0][1:-1]}\nLIMIT $1 OFFSET $2"
    union = "\nUNION ALL\n".join(branches)
    return f"{union}\nORDER BY 1 LIMIT $1 OFFSET $2"


async def list_rows(conn: Connection, threshold: int, limit: int, offset: int) -> list[asyncpg.Record]:
    """One page of the list: rows (id, user_id, created_at, goods_count) in id order."""
    sql = merge_query(bucket_of(threshold + 1))
    if "$3" not in sql:  # a tail's range alone: its index holds exactly the counts above the threshold
        return await conn.fetch(sql, limit, offset)
    return await conn.fetch(sql, limit, offset, threshold)


async def list_orders(conn: Connection, threshold: int, limit: int, offset: int) -> list[HistoryItem]:
    rows = await list_rows(conn, threshold, limit, offset)
    return [
        HistoryItem(id=r["id"], user_id=r["user_id"], created_at=r["created_at"], goods_count=r["goods_count"])
        for r in rows
    ]


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
