"""Read-side SQL. Nothing here aggregates goods at request time.

The list query, `goods_count > N ORDER BY id LIMIT L OFFSET O`, is served by the
index orders_listed_by_count (goods_count, id) INCLUDE (user_id, created_at):

1. a skip scan (recursive CTE, one index descent per value) finds the distinct
   goods_count values above N;
2. one UNION ALL branch per value, each an index range already ordered by id,
   merged by PostgreSQL's Merge Append and cut by LIMIT/OFFSET.

Cost: O(D + O + L) index tuples, where D is the number of distinct counts above
N, independent of how many orders or goods exist. Past MAX_BRANCHES distinct
values, the rarest tail is one more branch (`goods_count >= v`) that is sorted.
"""

from __future__ import annotations

from functools import cache

from order_history.schemas import GoodsItem, HistoryItem, OrderHistoryDetail
from shared.database import Connection

MAX_BRANCHES = 48
_LISTED = "known AND NOT deleted AND goods_count > 0"

_DISTINCT_COUNTS = f"""
WITH RECURSIVE c(n) AS (
    (SELECT goods_count FROM orders WHERE {_LISTED} AND goods_count > $1 ORDER BY goods_count LIMIT 1)
    UNION ALL
    SELECT (SELECT goods_count FROM orders WHERE {_LISTED} AND goods_count > c.n ORDER BY goods_count LIMIT 1)
    FROM c WHERE c.n IS NOT NULL
)
SELECT n FROM c WHERE n IS NOT NULL LIMIT $2
"""


@cache
def merge_query(exact_branches: int, tail: bool) -> str:
    """SQL with $1 = limit, $2 = offset, $3.. = one goods_count per branch."""
    branches = [
        f"SELECT id, user_id, created_at, goods_count FROM orders WHERE {_LISTED} AND goods_count = ${i + 3}"
        for i in range(exact_branches)
    ]
    if tail:
        branches.append(
            "SELECT id, user_id, created_at, goods_count FROM orders "
            f"WHERE {_LISTED} AND goods_count >= ${exact_branches + 3}"
        )
    union = "\n    UNION ALL\n    ".join(branches)
    return (
        f"SELECT id, user_id, created_at, goods_count FROM (\n    {union}\n) AS listed ORDER BY id LIMIT $1 OFFSET $2"
    )


async def list_orders(conn: Connection, threshold: int, limit: int, offset: int) -> list[HistoryItem]:
    counts = [r["n"] for r in await conn.fetch(_DISTINCT_COUNTS, threshold, MAX_BRANCHES + 1)]
    if not counts:
        return []
    tail = len(counts) > MAX_BRANCHES
    values = counts[: MAX_BRANCHES - 1] + [counts[MAX_BRANCHES - 1]] if tail else counts
    sql = merge_query(len(values) - 1 if tail else len(values), tail)
    rows = await conn.fetch(sql, limit, offset, *values)
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
