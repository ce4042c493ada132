"""Orphan goods: live goods whose order the read model has not heard of yet, and `order-history orphans`.

The consumer keeps such goods, and holds a placeholder row for their order
(known = false) until the order's own event arrives (projections.py). An
orphan is a live goods row whose order row is such a placeholder.

Contract:
- `figures()`: how many orphans, for how many orders, and the age of the
  oldest; read through the partial index orders_placeholders (migration 0012):
  the count reads the placeholder rows only (their goods_count), whatever the
  size of the tables, and the oldest age one index probe per placeholder with
  goods. The cost grows with the orphans, never with the read model.
- An orphan's age runs from the goods' created_at (the command side's time of
  its creation, carried by its events): it survives a rebuild, and a goods
  item moved onto an order not yet known counts from its creation, so an
  orphan is never reported younger than it is.
- `run()`: the console command: the orphans, oldest first (at most `limit`),
  then a one-line summary; exit 0 (orphans are a state, not a failure), 1 when
  the read database cannot be read.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from order_history.settings import Settings
from shared.database import WAIT_OUT_ERRORS, Connection

FIGURES: Final = """SELECT
    (SELECT count(*) FROM orders WHERE NOT known AND goods_count > 0) AS orders,
    (SELECT coalesce(sum(goods_count), 0)::bigint FROM orders WHERE NOT known) AS goods,
    (SELECT extract(epoch FROM now() - min(g.created_at))::float8
       FROM orders AS o JOIN goods AS g ON g.order_id = o.id AND NOT g.deleted
       WHERE NOT o.known AND o.goods_count > 0) AS oldest_age"""

LIST: Final = """SELECT g.id, g.order_id, g.name, g.created_at,
                        extract(epoch FROM now() - g.created_at)::float8 AS age
                 FROM orders AS o JOIN goods AS g ON g.order_id = o.id AND NOT g.deleted
                 WHERE NOT o.known
                 ORDER BY g.created_at NULLS LAST, g.id
                 LIMIT $1"""


@dataclass(frozen=True)
class Figures:
    goods: int  # orphan goods
    orders: int  # placeholder orders they name
    oldest_age: float | None  # seconds; None without orphans


async def figures(conn: Connection) -> Figures:
    row = await conn.fetchrow(FIGURES)
    assert row is not None
    return Figures(goods=row["goods"], orders=row["orders"], oldest_age=row["oldest_age"])


async def gather(settings: Settings, limit: int) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.query_database_url, timeout=10)
    try:
        found = await figures(conn)
        rows = await conn.fetch(LIST, limit)
    finally:
        await conn.close()
    return {
        "orphan_goods": found.goods,
        "orders_waited_for": found.orders,
        "oldest_age_seconds": found.oldest_age,
        "orphans": [
            {
                "goods_id": r["id"],
                "order_id": r["order_id"],
                "name": r["name"],
                "created_at": None if r["created_at"] is None else r["created_at"].isoformat(),
                "age_seconds": r["age"],
            }
            for r in rows
        ],
    }


def summary(report: dict[str, Any]) -> str:
    if not report["orphan_goods"]:
        return "0 orphan goods: every live goods item's order is known"
    shown = len(report["orphans"])
    more = f" ({shown} shown)" if shown < report["orphan_goods"] else ""
    return (
        f"{report['orphan_goods']} orphan goods{more} waiting for {report['orders_waited_for']} order(s); "
        f"the oldest created {_duration(report['oldest_age_seconds'])} ago"
    )


def render(report: dict[str, Any]) -> str:
    lines = []
    if report["orphans"]:
        lines.append(f"{'GOODS':>12} {'ORDER':>12}  {'CREATED AT':<32} {'AGE':>10}  NAME")
        for o in report["orphans"]:
            lines.append(
                f"{o['goods_id']:>12} {o['order_id']:>12}  {o['created_at'] or '-':<32} "
                f"{_duration(o['age_seconds']):>10}  {o['name'] if o['name'] is not None else '-'}"
            )
    lines.append(summary(report))
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


async def run(settings: Settings, as_json: bool, limit: int) -> int:
    try:
        report = await gather(settings, limit)
    except WAIT_OUT_ERRORS as exc:
        print(f"error: cannot read the orphan goods: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0
