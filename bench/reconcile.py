"""Measurement 6: `order-history reconcile` at the query's scale (1M orders / 10M goods in the full run).

The read model is bulk-loaded as for measurement 1, and its orders and goods
are copied into the order and goods databases (version 1, the same ids and
fields), so the two sides agree. The command then runs twice as its own
process: on the agreeing databases (0 differences), and after 10 rows of the
read model were changed (5 goods counts, 5 goods names), which it must report
exactly. Its time, and how many id ranges it read row by row, are reported.

Then the divergence sampler's cost at that scale (order_history/ops/sampler.py),
on the agreeing databases: every id range of every check compared once as a
step compares it (`Reconciler.range_differences`), timed per check, with the
plan of one range on each side (rows and buffers read); and one full pass
with the default settings, its steps run back to back, so the time of one step
(R ranges) is what the consumer's process and the databases spend each
interval.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.paths import REPO
from order_history.ops.checks import CHECKS, Check
from order_history.ops.reconciler import Reconciler
from order_history.ops.sampler import Sampler
from order_history.settings import Settings

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
    sampler = await _sampler_cost(bs)
    _sampler_tables(section, sampler)
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
        {
            "load": load,
            "agree_seconds": agree_s,
            "agree": agree,
            "differ_seconds": differ_s,
            "differ": differ,
            "sampler": sampler,
        }
    )
    report.goal("6 reconcile", "differences found exactly", float(exact), "", "1", exact)


def _settings(bs: BenchStack) -> Settings:
    env = bs.env("bench-sampler-")
    return Settings(
        database_url=env["ORDER_HISTORY_DATABASE_URL"],
        query_database_url=env["ORDER_HISTORY_QUERY_DATABASE_URL"],
        order_reader_database_url=env["ORDER_HISTORY_ORDER_READER_DATABASE_URL"],
        goods_reader_database_url=env["ORDER_HISTORY_GOODS_READER_DATABASE_URL"],
    )


async def _plan(reconciler: Reconciler, check: Check, side: str, number: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one range's count and hash sum on one side."""
    sql, key = (check.read_rows, check.key_read) if side == "read" else (check.command_rows, check.key_command)
    text = check.hashed(sql.format(where=f"{key} >= $2 AND {key} < $3"))
    low = number * reconciler.range_size
    conn = reconciler.conns["read" if side == "read" else check.source]
    plan = json.loads(
        await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text, reconciler.range_size, low, low + reconciler.range_size
        )
    )[0]
    scans = []
    stack = [plan["Plan"]]
    while stack:
        node = stack.pop()
        stack += node.get("Plans", [])
        if "Scan" in node["Node Type"]:
            scans.append({"node": node["Node Type"], "index": node.get("Index Name"), "rows": node["Actual Rows"]})
    top = plan["Plan"]
    return {
        "ms": plan["Execution Time"],
        "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
        "scans": scans,
    }


async def _sampler_cost(bs: BenchStack) -> dict[str, Any]:
    settings = _settings(bs)
    out: dict[str, Any] = {
        "range_size": settings.divergence_range_size,
        "ranges_per_step": settings.divergence_ranges,
        "interval": settings.divergence_interval,
        "checks": {},
    }
    with step("divergence sampler: every range once, then a full pass as the consumer runs it"):
        async with Reconciler(settings, settings.divergence_range_size, settings.database_url) as reconciler:
            for check in CHECKS:
                ranges = await reconciler.id_ranges(check)
                times = []
                for number in range(ranges):
                    started = time.perf_counter()
                    found = await reconciler.range_differences(check, number)
                    times.append(time.perf_counter() - started)
                    assert not found, found[:3]
                middle = ranges // 2
                out["checks"][check.name] = {
                    "ranges": ranges,
                    "seconds": times,
                    "command_plan": await _plan(reconciler, check, check.source, middle),
                    "read_plan": await _plan(reconciler, check, "read", middle),
                }
            state = await bs.connect("order_history")
            try:
                await state.execute("DELETE FROM divergent_rows; DELETE FROM divergence_sampler")
                sampler = Sampler(state, reconciler, settings.divergence_ranges, settings.divergence_settle)
                steps = []
                while True:
                    started = time.perf_counter()
                    report = await sampler.step()
                    steps.append(time.perf_counter() - started)
                    if report.passes_completed:
                        break
                await state.execute("DELETE FROM divergent_rows; DELETE FROM divergence_sampler")
            finally:
                await state.close()
    out["steps"] = steps
    return out


def _scans(plan: dict[str, Any]) -> str:
    return ", ".join(f"{s['node']} {s['index'] or ''} {s['rows']:,} rows".replace("  ", " ") for s in plan["scans"])


def _sampler_tables(section: Any, cost: dict[str, Any]) -> None:
    rows = []
    for name, check in cost["checks"].items():
        times = sorted(check["seconds"])
        if not times:
            continue
        rows.append(
            [
                name,
                check["ranges"],
                f"{1000 * times[len(times) // 2]:.1f}",
                f"{1000 * times[-1]:.1f}",
                _scans(check["command_plan"]),
                check["command_plan"]["buffers"],
                _scans(check["read_plan"]),
                check["read_plan"]["buffers"],
            ]
        )
    section.table(
        f"The divergence sampler: one id range of {cost['range_size']:,} ids compared on agreeing databases "
        "(count and hash sum per side), per check; the plans are of a range in the middle",
        ["check", "ranges", "median ms", "max ms", "command side reads", "buffers", "read model reads", "buffers"],
        rows,
    )
    steps = sorted(cost["steps"])
    total = len(steps)
    interval = cost["interval"]
    section.table(
        f"One full pass with the defaults ({cost['ranges_per_step']} ranges per step, a step every {interval:g} s), "
        "its steps run back to back",
        ["steps", "median step ms", "max step ms", "pass at the default interval", "busy share of an interval"],
        [
            [
                total,
                f"{1000 * steps[total // 2]:.1f}",
                f"{1000 * steps[-1]:.1f}",
                f"{total * interval + sum(steps):.0f} s",
                f"{100 * sum(steps) / total / interval:.2f} %",
            ]
        ],
    )
