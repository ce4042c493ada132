"""1b. The list's filters, sorts and cursors at scale, beside the plain plan without our indexes.

Runs on the read model and API that measurement 1 loaded and started (1,000,000
orders of users with 1 to 10,000 orders each, 10,000,000 goods in the full
scale). For each combination of user, created_at range, threshold and sort:
HTTP p50/p99 of its first page, direct p50/p99 (order_history.api.queries.list_rows),
the first page checked against plain SQL, and the plain query's time with every
secondary index of `orders` dropped (inside a transaction that is rolled back:
the plan PostgreSQL chooses with only the primary key). And a deep page, the
one starting at the 900,000th order, by cursor and by offset.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import asyncpg
from tqdm import tqdm

from devstack.stack import CURSOR_KEY
from order_history.api import cursors, queries

from .config import LIMIT, SKEW, USER_MAX_ORDERS, Scale
from .plans import Recorder, explain
from .report import Report
from .stats import LatencySummary, median, ratio
from .timing import HttpClient, timed_batch

# The loaded orders' created_at: 2026-01-01 plus 30 s per id (bench/query.py).
_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_SORT_SQL = {"id": "id", "-created_at": "created_at DESC, id DESC"}
# Ours is explained for these (the plans in docs/benchmarks.md, "Query").
_EXPLAINED = (f"user with {USER_MAX_ORDERS:,} orders, 30 days, sort=id", "no filter, sort=-created_at")
# Every run of the plain plan stops after this long (it reads the whole table in some combinations).
_PLAIN_TIMEOUT_S = 60


@dataclass
class Case:
    name: str
    threshold: int = 0
    user_id: int | None = None
    created: tuple[dt.datetime, dt.datetime] | None = None
    sort: str = "id"
    offset: int = 0
    after: cursors.After | None = None  # a deep page by cursor
    http: list[list[float]] = field(default_factory=list)
    direct: list[list[float]] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    matching: int = 0
    correct: bool = False

    def query(self) -> queries.ListQuery:
        return queries.ListQuery(
            threshold=self.threshold,
            limit=LIMIT,
            offset=self.offset,
            user_id=self.user_id,
            created_from=None if self.created is None else self.created[0],
            created_to=None if self.created is None else self.created[1],
            newest_first=self.sort == "-created_at",
            after=self.after,
        )

    def path(self, key: bytes) -> str:
        params: dict[str, Any] = {"threshold": self.threshold, "limit": LIMIT, "sort": self.sort}
        if self.offset:
            params["offset"] = self.offset
        if self.user_id is not None:
            params["user_id"] = self.user_id
        if self.created is not None:
            params["created_from"], params["created_to"] = (t.isoformat() for t in self.created)
        if self.after is not None:
            params["cursor"] = cursors.encode(key, self.query().fingerprint(), self.after)
        return "/v1/order-history?" + urlencode(params)

    def _where(self) -> tuple[str, tuple[Any, ...]]:
        """The page's filters (and cursor) as one plain WHERE clause, and its arguments."""
        where = ["known AND NOT deleted AND goods_count > $1"]
        args: list[Any] = [self.threshold]
        if self.user_id is not None:
            args.append(self.user_id)
            where.append(f"user_id = ${len(args)}")
        if self.created is not None:
            args += list(self.created)
            where.append(f"created_at >= ${len(args) - 1} AND created_at < ${len(args)}")
        if self.after is not None and self.sort == "id":  # the cursor's created_at is only a reading hint
            args.append(self.after.id)
            where.append(f"id > ${len(args)}")
        elif self.after is not None:
            args += [self.after.created_at, self.after.id]
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        return " AND ".join(where), tuple(args)

    def plain_sql(self) -> tuple[str, tuple[Any, ...]]:
        """The same page as one plain statement: filters in WHERE, the sort in ORDER BY, LIMIT/OFFSET."""
        where, args = self._where()
        sql = (
            f"SELECT id, user_id, created_at, goods_count FROM orders WHERE {where} "
            f"ORDER BY {_SORT_SQL[self.sort]} LIMIT {LIMIT} OFFSET {self.offset}"
        )
        return sql, args

    def count_sql(self) -> tuple[str, tuple[Any, ...]]:
        """How many orders the query matches, in plain SQL."""
        where, args = self._where()
        return f"SELECT count(*) FROM orders WHERE {where}", args


def cases(scale: Scale, users: dict[str, int]) -> list[Case]:
    """The combinations measured (the deep pages are added once the 900,000th order is known)."""
    span = scale.orders * 30  # seconds of created_at the orders cover
    month = (_START + dt.timedelta(seconds=span * 0.4), _START + dt.timedelta(seconds=span * 0.4 + 30 * 86400))
    big, mid, small = users["largest"], users["median"], users["smallest"]
    out: list[Case] = []
    for sort in ("id", "-created_at"):
        out += [
            Case(f"no filter, sort={sort}", sort=sort),
            Case(f"user with {USER_MAX_ORDERS:,} orders, sort={sort}", user_id=big, sort=sort),
            Case(f"user with {users['median_size']:,} orders, sort={sort}", user_id=mid, sort=sort),
            Case(f"user with 1 order, sort={sort}", user_id=small, sort=sort),
            Case(f"30 days, sort={sort}", created=month, sort=sort),
            Case(f"30 days, threshold 10, sort={sort}", created=month, threshold=10, sort=sort),
            Case(f"user with {USER_MAX_ORDERS:,} orders, 30 days, sort={sort}", user_id=big, created=month, sort=sort),
            Case(
                f"user with {USER_MAX_ORDERS:,} orders, 30 days, threshold 20, sort={sort}",
                user_id=big,
                created=month,
                threshold=20,
                sort=sort,
            ),
        ]
    return out


async def deep_cases(conn: asyncpg.Connection, depth: int) -> list[Case]:
    """The page starting at the depth-th listed order, by cursor and by offset, in both sorts."""
    out = []
    for sort in ("id", "-created_at"):
        last = await conn.fetchrow(
            f"""SELECT id, created_at FROM orders WHERE known AND NOT deleted AND goods_count > 0
                ORDER BY {_SORT_SQL[sort]} OFFSET {depth - 2} LIMIT 1"""
        )
        assert last is not None, f"fewer than {depth:,} listed orders"
        after = cursors.After(id=last["id"], created_at=last["created_at"])
        out.append(Case(f"page at the {depth:,}th order by cursor, sort={sort}", sort=sort, after=after))
        out.append(Case(f"page at the {depth:,}th order by offset, sort={sort}", sort=sort, offset=depth - 1))
    return out


async def _users(conn: asyncpg.Connection) -> dict[str, int]:
    sizes = await conn.fetch(
        "SELECT user_id, count(*) AS n FROM orders WHERE known AND NOT deleted GROUP BY user_id ORDER BY n, user_id"
    )
    middle = sizes[len(sizes) // 2]
    return {
        "largest": sizes[-1]["user_id"],
        "smallest": sizes[0]["user_id"],
        "median": middle["user_id"],
        "median_size": middle["n"],
    }


async def _check(conn: asyncpg.Connection, client: HttpClient, key: bytes, case: Case) -> None:
    sql, args = case.plain_sql()
    want = [r["id"] for r in await conn.fetch(sql, *args)]
    _, status, body = client.get(case.path(key))
    got = [item["id"] for item in json.loads(body)["data"]] if status == 200 else None
    direct = [r["id"] for r in await queries.list_rows(conn, case.query(), SKEW)]
    case.correct = got == want == direct
    if case.after is None:
        count, count_args = case.count_sql()
        case.matching = await conn.fetchval(count, *count_args)


async def _explain_ours(conn: asyncpg.Connection, case_list: list[Case]) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements ours runs for these cases."""
    out = []
    for case in case_list:
        recorder = Recorder(conn)
        await queries.list_rows(cast(asyncpg.Connection, recorder), case.query(), SKEW)
        for i, (sql, args) in enumerate(recorder.calls):
            out.append(f"== ours: {case.name}, statement {i + 1} ==\n{await explain(conn, sql, args)}")
    return out


async def _plain(conn: asyncpg.Connection, case_list: list[Case], runs: int) -> list[str]:
    """The plain statements' times with only the primary key and PostgreSQL's default settings: indexes
    dropped in a transaction, rolled back."""
    indexes = await conn.fetch(
        """SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           WHERE i.indrelid = 'orders'::regclass AND NOT i.indisprimary"""
    )
    plans: list[str] = []
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(f"SET LOCAL statement_timeout = '{_PLAIN_TIMEOUT_S}s'")
        # PostgreSQL's own choice: the defaults, not the API's session settings (no sorts, generic plans)
        for name in queries.SESSION_SETTINGS:
            await conn.execute(f"SET LOCAL {name} TO DEFAULT")
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["relname"]}"')
        for case in tqdm(case_list, desc="plain plans", unit="case"):
            sql, args = case.plain_sql()
            for _ in range(runs):
                t0 = time.perf_counter()
                await conn.fetch(sql, *args)
                case.plain.append((time.perf_counter() - t0) * 1000.0)
            plan = await conn.fetch(f"EXPLAIN {sql}", *args)
            plans.append(f"== {case.name} ==\n" + "\n".join(r[0] for r in plan))
    finally:
        await tr.rollback()
    return plans


async def run(conn: asyncpg.Connection, client: HttpClient, scale: Scale, report: Report, results_dir: Path) -> None:
    """Measurement 1b on measurement 1's read model and API: check, warm up, time, plain plans, report."""
    section = report.section("filters", "1b. Filters, sorts and cursors: GET /v1/order-history beside the plain plan")
    key = CURSOR_KEY.encode()  # the bench API runs with the stack's settings
    users = await _users(conn)
    listed = await conn.fetchval("SELECT count(*) FROM orders WHERE known AND NOT deleted AND goods_count > 0")
    depth = 900_000 if listed > 900_000 else int(listed * 0.9)
    case_list = cases(scale, users) + await deep_cases(conn, depth)
    for case in tqdm(case_list, desc="filters: check", unit="case"):
        await _check(conn, client, key, case)
        for _ in range(5):
            client.get(case.path(key))
    with tqdm(total=scale.query_trials * len(case_list), desc="filters: trials", unit="case") as bar:
        for _ in range(scale.query_trials):
            for case in case_list:
                path, q = case.path(key), case.query()

                async def over_http(path: str = path) -> object:
                    return client.get(path)

                async def direct(q: queries.ListQuery = q) -> object:
                    return await queries.list_rows(conn, q, SKEW)

                case.http.append(await timed_batch(over_http, scale.query_requests, scale.query_batch_seconds))
                case.direct.append(await timed_batch(direct, scale.query_requests, scale.query_batch_seconds))
                bar.update()
    ours = await _explain_ours(conn, [c for c in case_list if c.name in _EXPLAINED])
    plans = ours + await _plain(conn, case_list, runs=3)
    plan_file = results_dir / f"{report.started:%Y%m%dT%H%M%S}-{scale.name}-filters-plain-plans.txt"
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text("\n\n".join(plans))

    rows: list[list[object]] = []
    data: list[dict[str, Any]] = []
    for case in case_list:
        h, d = LatencySummary.of(case.http), LatencySummary.of(case.direct)
        plain = median(case.plain)
        rows.append(
            [
                case.name,
                case.matching or "–",
                h.p50,
                h.p99,
                d.p50,
                d.p99,
                plain,
                f"{ratio(plain, d.p50):.0f}x",
                case.correct,
            ]
        )
        data.append(
            {
                "case": case.name,
                "matching": case.matching,
                "http": h.as_dict(),
                "direct": d.as_dict(),
                "plain_ms": case.plain,
                "correct": case.correct,
            }
        )
    section.data["cases"] = data
    section.data["users"] = users
    section.table(
        f"limit {LIMIT}, threshold 0 unless named; latency in ms; ours: median over {scale.query_trials} trials of "
        f"each trial's p50/p99 (up to {scale.query_requests} sequential requests per trial); plain: the same page "
        "as one plain statement with only the primary key index, median of 3 runs",
        [
            "combination",
            "orders matching",
            "HTTP p50",
            "HTTP p99",
            "direct p50",
            "direct p99",
            "plain plan",
            "plain / direct p50",
            "page correct",
        ],
        rows,
    )
    section.note(
        f"30 days: the 30 days from 40% into the orders' creation times (about 86,400 orders). Users: the largest has "
        f"{USER_MAX_ORDERS:,} orders, the median one {users['median_size']:,}, the smallest 1. Deep pages: the page "
        f"of {LIMIT} starting at the {depth:,}th listed order. Plain plans (EXPLAIN): {plan_file.name} in the results "
        "folder."
    )
    worst = max(LatencySummary.of(c.http).p99 for c in case_list if c.offset == 0)
    report.goal(
        "1b filters", "HTTP p99, worst combination and the deep cursor page", worst, "ms", "<= 5 ms", worst <= 5.0
    )
    report.all_true("1b filters", "first pages equal to plain SQL", [c.correct for c in case_list])
