"""Measurement 6: `order-history reconcile` at the query's scale (1M orders / 10M goods in the full run).

The read model is bulk-loaded as for measurement 1, and its orders and goods
are copied into the order and goods databases (version 1, the same ids and
fields), so the two sides agree. The command then runs twice as its own
process: on the agreeing databases (0 differences), and after 10 rows of the
read model were changed (5 goods counts, 5 goods names), which it must report
exactly. Its time, and how many id ranges it read row by row, are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.stack import REPO

from .config import Scale
from .env import BenchStack, log, step
from .query import load_read_model
from .report import Report

_COPIES = (
    ("orders", "orders", "SELECT id, user_id, created_at, updated_at FROM orders WHERE known AND NOT deleted"),
    ("goods", "goods", "SELECT id, order_id, name, created_at, updated_at FROM goods WHERE NOT deleted"),
)


async def _copy_to_command_databases(bs: BenchStack, folder: Path) -> None:
    read = await bs.connect("order_history")
    try:
        for database, table, query in _COPIES:
            path = folder / f"{table}.copy"
            with step(f"copy {table} to the {database} database"):
                await read.copy_from_query(query, output=path, format="binary")
                target = await bs.connect(database)
                try:
                    await target.execute(f"TRUNCATE {table}, outbox")
                    columns = [c.strip() for c in query.split("SELECT", 1)[1].split("FROM", 1)[0].split(",")]
                    await target.copy_to_table(table, source=path, columns=columns, format="binary")
                    await target.execute(f"VACUUM ANALYZE {table}")
                finally:
                    await target.close()
            path.unlink()
    finally:
        await read.close()


def _reconcile(bs: BenchStack) -> tuple[float, dict[str, Any]]:
    env = bs.env("bench-reconcile-", LOG_LEVEL="WARNING")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "order_history", "reconcile", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"reconcile exited {done.returncode}: {done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout)
    return seconds, report


async def _corrupt(bs: BenchStack) -> set[tuple[str, int, str]]:
    conn = await bs.connect("order_history")
    try:
        orders = [r["id"] for r in await conn.fetch("SELECT id FROM orders WHERE goods_count > 0 ORDER BY id LIMIT 5")]
        goods = [r["id"] for r in await conn.fetch("SELECT id FROM goods ORDER BY id DESC LIMIT 5")]
        await conn.execute("UPDATE orders SET goods_count = goods_count + 1 WHERE id = ANY($1)", orders)
        await conn.execute("UPDATE goods SET name = 'forged' WHERE id = ANY($1)", goods)
    finally:
        await conn.close()
    return {("order", i, "goods_count") for i in orders} | {("goods", i, "name") for i in goods}


async def run(bs: BenchStack, scale: Scale, report: Report) -> None:
    section = report.section("reconcile", "6. Reconcile at scale")
    with step(f"bulk-loading {scale.orders:,} orders and {scale.goods:,} goods"):
        load = await load_read_model(bs, scale.orders, scale.goods)
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as folder:
        await _copy_to_command_databases(bs, Path(folder))
    await bs.checkpoint()
    agree_s, agree = _reconcile(bs)
    log(f"reconcile of agreeing databases: {agree_s:.1f} s, {len(agree['differences'])} difference(s)")
    corrupted = await _corrupt(bs)
    differ_s, differ = _reconcile(bs)
    found = {(d["entity"], d["id"], d["field"]) for d in differ["differences"]}
    section.table(
        f"`order-history reconcile --json` over {agree['compared']['orders']:,} orders and "
        f"{agree['compared']['goods']:,} goods (ranges of 10,000 ids)",
        ["databases", "seconds", "differences", "id ranges", "ranges read row by row"],
        [
            ["agreeing", f"{agree_s:.1f}", len(agree["differences"]), agree["ranges"], agree["ranges_differing"]],
            [
                "10 read-model rows changed",
                f"{differ_s:.1f}",
                len(differ["differences"]),
                differ["ranges"],
                differ["ranges_differing"],
            ],
        ],
    )
    exact = found == corrupted and not agree["differences"]
    section.note(f"The changed rows reported exactly (and nothing else): {exact}.")
    section.data.update(
        {"load": load, "agree_seconds": agree_s, "agree": agree, "differ_seconds": differ_s, "differ": differ}
    )
    report.goal("6 reconcile", "differences found exactly", float(exact), "", "1", exact)
