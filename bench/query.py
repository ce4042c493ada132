"""1. Query at scale: GET /v1/order-history vs the original design's GROUP BY/HAVING query.

The read model is bulk-loaded in SQL (generate_series, secondary indexes built
after the load) with goods per order drawn from a geometric distribution of
mean goods/orders (10), so thresholds 0..30 select from ~90% down to ~5% of the
orders and the counts spread over ~150 distinct values. The original design's
tables live in the schema `baseline` of the same database, filled from the same
rows, with an index on goods(order_id); its query is timed with asyncpg
directly (no HTTP). Ours is timed both over HTTP on loopback and directly via
order_history.api.queries.list_rows (the list query's SQL, rows as asyncpg returns
them, as the original query is timed), on a connection with the API's settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
from tqdm import tqdm

from devstack.processes import ManagedProcess
from order_history.api import queries

from . import filters
from .config import LIMIT, OFFSETS, SKEW, THRESHOLDS, USER_MAX_ORDERS, Scale
from .env import BenchStack, log, step
from .plans import Recorder, explain, plan_times
from .report import Report, Section, fmt
from .stats import CpuMeter, LatencySummary, median, ratio
from .timing import HttpClient, timed_batch

BASELINE_SQL = """
SELECT orders.id, orders.user_id, orders.created_at, COUNT(goods.id) AS goods_count
FROM baseline.orders AS orders JOIN baseline.goods AS goods ON goods.order_id = orders.id
GROUP BY orders.id HAVING COUNT(goods.id) > $1 LIMIT $2 OFFSET $3
"""

REFERENCE_SQL = """
SELECT id FROM orders WHERE known AND NOT deleted AND goods_count > $1 ORDER BY id LIMIT $2 OFFSET $3
"""

# The API's session settings (order_history/api/app.py uses queries.SESSION_SETTINGS when it has them).
API_SETTINGS: dict[str, str] = dict(getattr(queries, "SESSION_SETTINGS", {"plan_cache_mode": "force_custom_plan"}))


# -- bulk load -------------------------------------------------------------------
async def load_read_model(bs: BenchStack, orders: int, goods: int) -> dict[str, Any]:
    """Fill the read model with `orders` orders and exactly `goods` goods, and the baseline schema."""
    mean = goods / orders
    q = mean / (mean + 1.0)  # geometric on {0, 1, ...} with this mean
    conn = await bs.connect("order_history")
    info: dict[str, Any] = {}
    try:
        await conn.execute(
            "SET maintenance_work_mem = '1GB'; SET work_mem = '256MB'; SET max_parallel_maintenance_workers = 2"
        )
        steps: list[tuple[str, str]] = []
        indexes = await conn.fetch(
            """SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid IN ('orders'::regclass, 'goods'::regclass)
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"""
        )
        steps.append(
            (
                "empty the read model",
                "TRUNCATE orders, goods, consumer_positions, dead_letters; DROP SCHEMA IF EXISTS baseline CASCADE",
            )
        )
        steps += [(f"drop index {r['name']} for the load", f'DROP INDEX "{r["name"]}"') for r in indexes]
        steps.append(
            (
                "plan goods per order (geometric)",
                f"""SELECT setseed(0.4242);
                CREATE TEMP TABLE bench_plan AS
                SELECT id, c, sum(c) OVER (ORDER BY id) - c AS start
                FROM (SELECT id, floor(ln(1.0 - random()) / ln({q!r}))::integer AS c
                      FROM generate_series(1, {orders}) AS id) s""",
            )
        )
        steps.append(
            (
                "plan users with 1 to 10,000 orders each (log-uniform sizes; user 1 has 10,000)",
                f"""SELECT setseed(0.1717);
                CREATE TEMP TABLE bench_users AS
                SELECT user_id, size, sum(size) OVER (ORDER BY user_id) - size AS first
                FROM (SELECT u AS user_id,
                             CASE WHEN u = 1 THEN {USER_MAX_ORDERS} WHEN u = 2 THEN 1
                                  ELSE least({USER_MAX_ORDERS},
                                             floor(exp(random() * ln({USER_MAX_ORDERS} + 1))))::integer
                             END AS size
                      FROM generate_series(1, {orders}) AS u) s;
                DELETE FROM bench_users WHERE first >= {orders};
                CREATE TEMP TABLE bench_owner AS
                SELECT row_number() OVER (ORDER BY random()) AS order_id, u.user_id
                FROM bench_users u, generate_series(1, u.size) AS k
                WHERE u.first + k <= {orders};
                CREATE UNIQUE INDEX ON bench_owner (order_id)""",
            )
        )
        steps.append(
            (
                f"insert {goods:,} goods",
                f"""INSERT INTO goods (id, order_id, name, created_at, updated_at, version, deleted)
                SELECT p.start + k, p.id, 'goods ' || (p.start + k), t.ts, t.ts, 1, false
                FROM bench_plan p, generate_series(1, p.c) AS k,
                     LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + (p.id * 30 + k) * interval '1 second') t(ts)
                WHERE p.start + k <= {goods};
                INSERT INTO goods (id, order_id, name, created_at, updated_at, version, deleted)
                SELECT s.total + j, 1 + (j * 7919) % {orders}, 'goods ' || (s.total + j), now(), now(), 1, false
                FROM (SELECT coalesce(sum(c), 0) AS total FROM bench_plan) s,
                     generate_series(1, {goods} - s.total) AS j""",
            )
        )
        steps.append(
            (
                f"insert {orders:,} orders with their goods_count",
                f"""INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
                SELECT p.id, w.user_id, t.ts, t.ts, 1, true, false, coalesce(n.n, 0)
                FROM bench_plan p
                JOIN bench_owner w ON w.order_id = p.id
                LEFT JOIN (SELECT order_id, count(*)::integer AS n FROM goods GROUP BY order_id) n ON n.order_id = p.id,
                -- 30 s apart, up to 2 s out of id order (within the creation skew setting)
                LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + p.id * interval '30 seconds'
                                + ((p.id::bigint * 7919) % 4001 - 2000) * interval '1 millisecond') t(ts)
                WHERE p.id <= {orders}""",
            )
        )
        steps += [(f"build index {r['name']}", r["def"]) for r in indexes]
        steps.append(
            (
                "original design's tables (schema baseline)",
                """CREATE SCHEMA baseline;
               CREATE TABLE baseline.orders (id bigint PRIMARY KEY, user_id bigint NOT NULL,
                                             created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
               CREATE TABLE baseline.goods (id bigint PRIMARY KEY, order_id bigint NOT NULL, name text,
                                            created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
               INSERT INTO baseline.orders SELECT id, user_id, created_at, updated_at
                                           FROM orders WHERE known AND NOT deleted;
               INSERT INTO baseline.goods SELECT id, order_id, name, created_at, updated_at
                                          FROM goods WHERE NOT deleted;
               CREATE INDEX goods_order_id ON baseline.goods (order_id)""",
            )
        )
        steps += [
            (f"VACUUM ANALYZE {t}", f"VACUUM ANALYZE {t}")
            for t in ("orders", "goods", "baseline.orders", "baseline.goods")
        ]
        timings: dict[str, float] = {}
        started = time.monotonic()
        with tqdm(steps, desc="load read model", unit="step", leave=True) as bar:
            for name, sql in bar:
                bar.set_postfix_str(name)
                t0 = time.monotonic()
                await conn.execute(sql)
                timings[name] = round(time.monotonic() - t0, 1)
        info["load_seconds"] = round(time.monotonic() - started, 1)
        info["load_steps_seconds"] = timings
        info["orders"] = await conn.fetchval("SELECT count(*) FROM orders")
        info["goods"] = await conn.fetchval("SELECT count(*) FROM goods")
        info["baseline_orders"] = await conn.fetchval("SELECT count(*) FROM baseline.orders")
        info["baseline_goods"] = await conn.fetchval("SELECT count(*) FROM baseline.goods")
        info["goods_count_mismatches"] = await conn.fetchval(
            """SELECT count(*) FROM orders o
               LEFT JOIN (SELECT order_id, count(*) AS n FROM goods WHERE NOT deleted GROUP BY order_id) c
                      ON c.order_id = o.id
               WHERE o.goods_count <> coalesce(c.n, 0)"""
        )
        info["distinct_counts"] = await conn.fetchval("SELECT count(DISTINCT goods_count) FROM orders")
        info["max_goods_count"] = await conn.fetchval("SELECT max(goods_count) FROM orders")
        info["users"] = await conn.fetchval("SELECT count(DISTINCT user_id) FROM orders")
        info["orders_per_user"] = dict(
            await conn.fetchrow(  # type: ignore[arg-type]
                """SELECT min(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median, max(n)
                   FROM (SELECT count(*) AS n FROM orders GROUP BY user_id) s"""
            )
        )
        info["sizes"] = {
            r["name"]: r["size"]
            for r in await conn.fetch(
                """SELECT c.oid::regclass::text AS name, pg_size_pretty(pg_total_relation_size(c.oid)) AS size
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind = 'r' AND n.nspname IN ('public', 'baseline') AND c.relname IN ('orders', 'goods')"""
            )
        }
    finally:
        await conn.close()
    return info


# -- timing ------------------------------------------------------------------------
@dataclass
class Combo:
    threshold: int
    offset: int
    http: list[list[float]] = field(default_factory=list)
    direct: list[list[float]] = field(default_factory=list)
    generic: list[list[float]] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    matching: int = 0
    rows: int = 0
    baseline_rows: int = -1
    correct: bool = False


def _list(threshold: int, offset: int) -> queries.ListQuery:
    return queries.ListQuery(threshold=threshold, limit=LIMIT, offset=offset)


def _path(threshold: int, offset: int) -> str:
    return f"/v1/order-history?threshold={threshold}&limit={LIMIT}&offset={offset}"


@dataclass
class _Connections:
    """The HTTP client of the API and the database connections the timings use."""

    client: HttpClient
    conn: asyncpg.Connection  # the API's session settings
    generic_conn: asyncpg.Connection  # PostgreSQL's default settings: a diagnostic
    baseline_conn: asyncpg.Connection  # the API's settings, with a statement timeout

    async def close(self) -> None:
        """Close the client and the connections, in the order they were opened."""
        self.client.close()
        await self.conn.close()
        await self.generic_conn.close()
        await self.baseline_conn.close()


@dataclass
class _Explained:
    """EXPLAIN ANALYZE texts by statement, the combination they were taken at, and the file they went to."""

    worst: Combo
    plans: dict[str, str]
    explain_file: Path


async def _load(bs: BenchStack, scale: Scale, section: Section) -> dict[str, Any]:
    """Bulk-load the read model and the baseline schema; their figures go into the section's data."""
    with step(f"bulk-loading {scale.orders:,} orders and {scale.goods:,} goods"):
        info = await load_read_model(bs, scale.orders, scale.goods)
    section.data["load"] = info
    log(f"loaded: {json.dumps(info)}")
    return info


async def _start_api(bs: BenchStack) -> ManagedProcess:
    """Start the order_history API process and wait until it is ready."""
    prefix = "bench-query-"
    await bs.create_topics(prefix)
    api = bs.service("order_history-api", prefix)
    api.start()
    bs.wait_ready(["order_history-api"])
    return api


async def _connect(bs: BenchStack, scale: Scale) -> _Connections:
    """The API's HTTP client, and connections with the API's settings, PostgreSQL's defaults and for the baseline."""
    client = HttpClient(bs.port_of("order_history-api"))
    conn = await bs.connect("order_history", **API_SETTINGS)
    generic_conn = await bs.connect("order_history")
    baseline_conn = await bs.connect("order_history", **API_SETTINGS)
    await baseline_conn.execute(f"SET statement_timeout = '{int(scale.baseline_timeout_s * 1000)}ms'")
    return _Connections(client, conn, generic_conn, baseline_conn)


async def _check_correctness(c: _Connections, combos: list[Combo]) -> None:
    """Correctness and selectivity, once per combination: the page over HTTP and direct vs the reference query."""
    for combo in combos:
        combo.matching = await c.conn.fetchval(
            "SELECT count(*) FROM orders WHERE known AND NOT deleted AND goods_count > $1", combo.threshold
        )
        _, status, body = c.client.get(_path(combo.threshold, combo.offset))
        got = [item["id"] for item in json.loads(body)["data"]] if status == 200 else []
        want = [r["id"] for r in await c.conn.fetch(REFERENCE_SQL, combo.threshold, LIMIT, combo.offset)]
        direct = [row["id"] for row in await queries.list_rows(c.conn, _list(combo.threshold, combo.offset), SKEW)]
        combo.rows = len(got)
        combo.correct = status == 200 and got == want and direct == want


async def _warm_up(c: _Connections, combos: list[Combo]) -> None:
    """Warm-up: every path, and one full run of the original query (its caches)."""
    with tqdm(total=len(combos), desc="warm-up", unit="combo") as bar:
        for combo in combos:
            for _ in range(5):
                c.client.get(_path(combo.threshold, combo.offset))
                await queries.list_rows(c.conn, _list(combo.threshold, combo.offset), SKEW)
                await queries.list_rows(c.generic_conn, _list(combo.threshold, combo.offset), SKEW)
            bar.update()
    await c.baseline_conn.fetch(BASELINE_SQL, max(THRESHOLDS), LIMIT, 0)


async def _time_ours(scale: Scale, c: _Connections, combo: Combo) -> None:
    """One trial of ours at one combination: a batch over HTTP, direct, and direct with PG defaults."""
    client, conn, generic_conn = c.client, c.conn, c.generic_conn
    path = _path(combo.threshold, combo.offset)
    t, o, budget, n = combo.threshold, combo.offset, scale.query_batch_seconds, scale.query_requests

    async def over_http(path: str = path) -> object:
        return client.get(path)

    async def direct_call(t: int = t, o: int = o) -> object:
        return await queries.list_rows(conn, _list(t, o), SKEW)

    async def generic(t: int = t, o: int = o) -> object:
        return await queries.list_rows(generic_conn, _list(t, o), SKEW)

    combo.http.append(await timed_batch(over_http, n, budget))
    combo.direct.append(await timed_batch(direct_call, n, budget))
    combo.generic.append(await timed_batch(generic, n, budget))


async def _time_baseline(scale: Scale, c: _Connections, combo: Combo) -> None:
    """One run of the original query at one combination (the timeout's length when it is cancelled)."""
    t0 = time.perf_counter()
    try:
        found = await c.baseline_conn.fetch(BASELINE_SQL, combo.threshold, LIMIT, combo.offset)
        combo.baseline.append((time.perf_counter() - t0) * 1000.0)
        combo.baseline_rows = len(found)
    except asyncpg.QueryCanceledError:
        combo.baseline.append(scale.baseline_timeout_s * 1000.0)
        combo.baseline_rows = -2


async def _measure_trials(
    bs: BenchStack, api: ManagedProcess, scale: Scale, c: _Connections, combos: list[Combo], section: Section
) -> None:
    """The trials: every combination in turn, ours in each trial, the original in the first few; CPU meanwhile."""
    meter = CpuMeter({"order_history-api": lambda: bs.tree_pids(api), "postgres": bs.postgres_pids})
    meter.start()
    total = scale.query_trials * len(combos)
    with tqdm(total=total, desc="query trials", unit="combo") as bar:
        for trial in range(scale.query_trials):
            for combo in combos:
                await _time_ours(scale, c, combo)
                if trial < scale.baseline_runs:
                    await _time_baseline(scale, c, combo)
                bar.update()
    section.data["cpu_percent_of_one_core"] = meter.stop()


async def _explain(
    c: _Connections, combos: list[Combo], report: Report, scale: Scale, results_dir: Path, section: Section
) -> _Explained:
    """EXPLAIN ANALYZE of both at the original query's worst combination, and of ours at threshold 0; to a file."""
    worst = max(combos, key=lambda combo: median(combo.baseline))
    plans = {
        f"original, threshold {worst.threshold}, offset {worst.offset}": await explain(
            c.baseline_conn, BASELINE_SQL, (worst.threshold, LIMIT, worst.offset)
        )
    }
    for threshold, offset in ((worst.threshold, worst.offset), (0, 0)):
        recorder = Recorder(c.conn)
        await queries.list_rows(cast(asyncpg.Connection, recorder), _list(threshold, offset), SKEW)
        for i, (sql, args) in enumerate(recorder.calls):
            key = f"ours (API settings), threshold {threshold}, offset {offset}, statement {i + 1}"
            plans[key] = await explain(c.conn, sql, args)
    explain_file = results_dir / f"{report.started:%Y%m%dT%H%M%S}-{scale.name}-query-explain.txt"
    explain_file.parent.mkdir(parents=True, exist_ok=True)
    explain_file.write_text("\n\n".join(f"== {name} (limit {LIMIT}) ==\n{text}" for name, text in plans.items()))
    section.data["explain"] = plans
    return _Explained(worst, plans, explain_file)


def _combo_row(c: Combo, h: LatencySummary, d: LatencySummary, g: LatencySummary) -> list[object]:
    """The table row of one combination."""
    b50 = median(c.baseline)
    bmax = max(c.baseline) if c.baseline else float("nan")
    return [
        c.threshold,
        c.offset,
        c.matching,
        c.rows,
        h.p50,
        h.p99,
        d.p50,
        d.p99,
        g.p50,
        g.p99,
        b50,
        bmax,
        f"{fmt(ratio(b50, d.p50))}x",
        f"{fmt(ratio(b50, h.p50))}x",
        c.correct,
    ]


def _combo_data(c: Combo, h: LatencySummary, d: LatencySummary, g: LatencySummary) -> dict[str, Any]:
    """The JSON data of one combination."""
    return {
        "threshold": c.threshold,
        "offset": c.offset,
        "matching_orders": c.matching,
        "rows": c.rows,
        "http": h.as_dict(),
        "direct": d.as_dict(),
        "direct_pg_default_settings": g.as_dict(),
        "original_ms": c.baseline,
        "original_rows": c.baseline_rows,
        "correct": c.correct,
    }


def _report_combos(section: Section, scale: Scale, combos: list[Combo]) -> None:
    """Every combination's latencies and correctness: the data and the table."""
    rows: list[list[object]] = []
    data: list[dict[str, Any]] = []
    for c in combos:
        h, d, g = LatencySummary.of(c.http), LatencySummary.of(c.direct), LatencySummary.of(c.generic)
        rows.append(_combo_row(c, h, d, g))
        data.append(_combo_data(c, h, d, g))
    section.data["combos"] = data
    section.table(
        f"limit {LIMIT}; latency in ms; ours: median over {scale.query_trials} trials of each trial's p50/p99 "
        f"(sequential requests per trial and path: up to {scale.query_requests}, stopping after "
        f"{scale.query_batch_seconds:g} s once 5 are in; sample counts in the JSON); "
        f"original: {scale.baseline_runs} runs (median, max)",
        [
            "threshold",
            "offset",
            "orders matching",
            "rows",
            "HTTP p50",
            "HTTP p99",
            "direct p50",
            "direct p99",
            "direct, PG defaults p50",
            "direct, PG defaults p99",
            "original p50",
            "original max",
            "original/direct",
            "original/HTTP",
            "page correct",
        ],
        rows,
    )


def _report_notes(section: Section, load: dict[str, Any], explained: _Explained) -> None:
    """Notes on the read model, the method and the plans; the plan timings; CPU."""
    worst = explained.worst
    section.note(
        f"Read model: {load['orders']:,} orders, {load['goods']:,} goods "
        f"({load['distinct_counts']} distinct goods_count "
        f"values, max {load['max_goods_count']}; goods_count mismatches after load: {load['goods_count_mismatches']}); "
        f"loaded in {load['load_seconds']} s; sizes {load['sizes']}."
    )
    section.note(
        "HTTP: sequential GETs on one keep-alive connection to the order_history API process (uvicorn, one worker). "
        "Direct: order_history.api.queries.list_rows (rows, as the original is timed) on an asyncpg connection "
        f"with the API's session settings "
        f"({API_SETTINGS}). Direct, PG defaults: the same on a connection with PostgreSQL's default settings "
        "(a diagnostic; the API does not run so). "
        "Original: the original design's query on schema baseline (same rows, index on goods(order_id)), "
        "asyncpg, no HTTP."
    )
    section.note(
        "Goods ids are assigned in order-id order (goods of one order are adjacent on disk): "
        "the original query's best case. "
        f"EXPLAIN ANALYZE of both at the original's worst (threshold {worst.threshold}, offset {worst.offset}) "
        f"and of ours at threshold 0: {explained.explain_file.name} in the results folder."
    )
    section.table(
        "EXPLAIN (ANALYZE, BUFFERS): planning and execution time per statement, ms",
        ["statement", "planning", "execution"],
        [[name, *plan_times(text)] for name, text in explained.plans.items()],
    )
    section.note(f"CPU during the trials (% of one core): {section.data['cpu_percent_of_one_core']}")


def _report_goals(report: Report, combos: list[Combo], worst: Combo) -> None:
    """The measurement's goals: HTTP p99, the original / ours ratios at its worst, and correct pages."""
    worst_http_p99 = max(LatencySummary.of(c.http).p99 for c in combos)
    report.goal("1 query", "HTTP p99, worst threshold/offset", worst_http_p99, "ms", "<= 10 ms", worst_http_p99 <= 10.0)
    worst_b = median(worst.baseline)
    direct_ratio = ratio(worst_b, LatencySummary.of(worst.direct).p50)
    http_ratio = ratio(worst_b, LatencySummary.of(worst.http).p50)
    report.goal(
        "1 query",
        f"original / ours at original's worst (threshold {worst.threshold}, offset {worst.offset}), direct p50",
        direct_ratio,
        "x",
        ">= 100x",
        direct_ratio >= 100.0,
    )
    report.goal(
        "1 query",
        "original / ours over HTTP at the same, p50",
        http_ratio,
        "x",
        "(info: ours incl. HTTP)",
        http_ratio >= 100.0,
    )
    report.all_true("1 query", "pages equal to ORDER BY id reference", [c.correct for c in combos])


async def run(bs: BenchStack, scale: Scale, report: Report, results_dir: Path) -> None:
    """Measurement 1: load, start the API, check, warm up, time the trials, explain, and report."""
    section = report.section("query", "1. Query at scale: GET /v1/order-history vs the original query")
    info = await _load(bs, scale, section)
    api = await _start_api(bs)
    conns = await _connect(bs, scale)
    combos = [Combo(t, o) for t in THRESHOLDS for o in OFFSETS]
    try:
        await _check_correctness(conns, combos)
        await _warm_up(conns, combos)
        await _measure_trials(bs, api, scale, conns, combos, section)
        explained = await _explain(conns, combos, report, scale, results_dir, section)
        await filters.run(conns.conn, conns.client, scale, report, results_dir)
    finally:
        await conns.close()
        api.stop()

    _report_combos(section, scale, combos)
    _report_notes(section, info, explained)
    _report_goals(report, combos, explained.worst)
