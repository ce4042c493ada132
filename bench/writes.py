"""3. Write path: POST /v1/order and /v1/goods under wrk, relays running, vs pgbench on the same database.

wrk (C, one thread, 64 keep-alive connections, a Lua script for the JSON body)
drives each API for a fixed time while both outbox relays publish to Kafka; the
outbox backlog (unpublished rows) is sampled during the load, and after wrk
exits it is polled until it is empty. Beside it, on the same database, pgbench
with 64 clients runs (a) a bare INSERT-and-commit into a copy of the orders
table, the database's own limit for one-row commits; (b) the order service's
transaction without Python: INSERT order + INSERT outbox row in one
transaction; (c) the same with a statement trigger calling pg_notify inside the
transaction (the original outbox migration's wake-up; NOTIFY serialises commits).
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from devstack.processes import ManagedProcess
from shared.command.outbox import UNPUBLISHED_SQL
from shared.events import OrderData, new_event

from .config import Scale
from .env import BenchStack, log
from .profile import Profiler
from .report import Report, Section, fmt
from .stats import CpuMeter, median, percentile, ratio


def lua_done(prelude: str = "", extra: dict[str, str] | None = None) -> str:
    """wrk's done(): the BENCH_JSON line parse_wrk reads, with wrk's summary and `extra`
    integer fields (JSON name -> Lua expression), computed after the Lua `prelude`."""
    extra = extra or {}
    names = "".join(f', "{name}": %d' for name in extra)
    values = "".join(f", {expression}" for expression in extra.values())
    return (
        "\ndone = function(summary, latency, requests)\n"
        + prelude
        + """  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d, "mean_us": %.1f"""
        + names
        + """}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean"""
        + values
        + "))\nend\n"
    )


LUA_DONE = lua_done()


def lua_script(service: str, max_order_id: int, delay_ms: float = 0.0) -> str:
    """POST /v1/order {"user_id"} or POST /v1/goods {"order_id", "name"}; `delay_ms` paces each connection."""
    if service == "order":
        body = """'{"user_id": ' .. math.random(1, 100000) .. '}'"""
        path = "/v1/order"
    else:
        body = f"""'{{"order_id": ' .. math.random(1, {max(1, max_order_id)}) .. ', "name": "bench goods"}}'"""
        path = "/v1/goods"
    delay = f"delay = function() return {delay_ms:.3f} end\n" if delay_ms > 0 else ""
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local counter = 0\n"
        "setup = function(thread) math.randomseed(os.time()) end\n"
        f'request = function()\n  return wrk.format(nil, "{path}", nil, {body})\nend\n'
        f"{delay}{LUA_DONE}"
    )


def wrk_argv(url: str, script: Path, connections: int, seconds: float) -> list[str]:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does it)")
    return [
        exe,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]


def parse_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            seconds = data["duration_us"] / 1e6
            data["rps"] = data["requests"] / seconds if seconds else 0.0
            errors = sum(
                data[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            )
            data["errors"] = errors
            data["ok_rps"] = (data["requests"] - data["status_errors"]) / seconds if seconds else 0.0
            return data
    raise RuntimeError(f"wrk printed no summary:\n{stdout[-2000:]}")


async def wait_with_progress(
    proc: asyncio.subprocess.Process, seconds: float, desc: str, tick: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Wait for a timed load generator, with a progress bar; `tick` runs every 0.5 s meanwhile."""
    started = time.monotonic()
    with tqdm(total=round(seconds), desc=desc, unit="s") as bar:
        while proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout=0.5)
            except TimeoutError:
                pass
            if tick is not None:
                await tick()
            bar.n = min(round(seconds), round(time.monotonic() - started))
            bar.refresh()


async def outbox_backlog(bs: BenchStack, database: str) -> int:
    conn = await bs.connect(database)
    try:
        return int(await conn.fetchval(UNPUBLISHED_SQL))
    finally:
        await conn.close()


async def run_wrk_with_backlog(
    bs: BenchStack, url: str, script: Path, connections: int, seconds: float, database: str, desc: str
) -> dict[str, Any]:
    """Run wrk; sample the outbox backlog meanwhile; then time how long the relay takes to empty it."""
    conn = await bs.connect(database)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrk_argv(url, script, connections, seconds), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        started = time.monotonic()
        samples: list[int] = []

        async def sample_backlog() -> None:
            samples.append(int(await conn.fetchval(UNPUBLISHED_SQL)))

        await wait_with_progress(proc, seconds, desc, sample_backlog)
        stopped = time.monotonic()
        out, err = await proc.communicate()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        backlog_at_stop = int(await conn.fetchval(UNPUBLISHED_SQL))
        drained_after: float | None = None
        while time.monotonic() - stopped < 60:
            if int(await conn.fetchval(UNPUBLISHED_SQL)) == 0:
                drained_after = time.monotonic() - stopped
                break
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    result = parse_wrk(out.decode())
    result["backlog_max"] = max(samples, default=0)
    result["backlog_at_stop"] = backlog_at_stop
    result["drain_seconds"] = drained_after
    result["wrk_cpu_percent_of_one_core"] = round(100.0 * wrk_cpu / max(stopped - started, 1e-9), 1)
    return result


# -- pgbench -----------------------------------------------------------------------
PG_SETUP = """
DROP TABLE IF EXISTS bench_bare, bench_orders, bench_outbox, bench_outbox_notify;
CREATE TABLE bench_bare (LIKE orders INCLUDING ALL);
CREATE TABLE bench_orders (LIKE orders INCLUDING ALL);
CREATE TABLE bench_outbox (LIKE outbox INCLUDING ALL);
CREATE TABLE bench_outbox_notify (LIKE outbox INCLUDING ALL);
CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER bench_outbox_notify AFTER INSERT ON bench_outbox_notify
    FOR EACH STATEMENT EXECUTE FUNCTION bench_notify();
"""
PG_TEARDOWN = """
DROP TABLE IF EXISTS bench_bare, bench_orders, bench_outbox, bench_outbox_notify;
DROP FUNCTION IF EXISTS bench_notify();
"""


def pgbench_scripts(directory: Path) -> dict[str, Path]:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    payload = (
        new_event("order.created", 1, 1, OrderData(id=1, user_id=7, created_at=now, updated_at=now)).to_json().decode()
    )
    payload = payload.replace("'", "''")
    scripts = {
        "bare INSERT + commit (pgbench)": (
            "\\set uid random(1, 100000)\nINSERT INTO bench_bare (user_id) VALUES (:uid);\n"
        ),
        "order's transaction: INSERT order + outbox row (pgbench)": (
            "\\set uid random(1, 100000)\n"
            "BEGIN;\n"
            "INSERT INTO bench_orders (user_id) VALUES (:uid) RETURNING id, user_id, created_at, updated_at, version;\n"
            "INSERT INTO bench_outbox (event_id, topic, message_key, payload) "
            f"VALUES (gen_random_uuid(), 'order.events', (:uid)::text, '{payload}'::jsonb);\n"
            "COMMIT;\n"
        ),
        "the same with a NOTIFY trigger inside the transaction (pgbench)": (
            "\\set uid random(1, 100000)\n"
            "BEGIN;\n"
            "INSERT INTO bench_orders (user_id) VALUES (:uid) RETURNING id, user_id, created_at, updated_at, version;\n"
            "INSERT INTO bench_outbox_notify (event_id, topic, message_key, payload) "
            f"VALUES (gen_random_uuid(), 'order.events', (:uid)::text, '{payload}'::jsonb);\n"
            "COMMIT;\n"
        ),
    }
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (name, text) in enumerate(scripts.items()):
        path = directory / f"pgbench-{i}.sql"
        path.write_text(text)
        paths[name] = path
    return paths


def _clear_pgbench_logs(workdir: Path) -> None:
    for old in workdir.glob("pgb.*"):
        old.unlink()


def _pgbench_latencies_ms(workdir: Path) -> list[float]:
    """Per-transaction latencies from pgbench --log files (third field, in µs)."""
    latencies: list[float] = []
    for log_file in workdir.glob("pgb.*"):
        for line in log_file.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1000.0)
    return latencies


async def run_pgbench(
    bs: BenchStack, script: Path, clients: int, seconds: float, workdir: Path, desc: str
) -> dict[str, Any]:
    exe = shutil.which("pgbench") or str(bs.stack.postgres.bindir / "pgbench")
    _clear_pgbench_logs(workdir)
    argv = [
        exe,
        "-h",
        "127.0.0.1",
        "-p",
        str(bs.config.pg_port),
        "-U",
        "order_svc",
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        "2",
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script),
        "--log",
        f"--log-prefix={workdir / 'pgb'}",
        "orders",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(workdir),
        env={"PGPASSWORD": "order_svc", "PATH": "/usr/bin:/bin"},
    )
    await wait_with_progress(proc, seconds, desc)
    out, err = await proc.communicate()
    text = out.decode()
    if proc.returncode != 0:
        raise RuntimeError(
            f"pgbench failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}\n{text[-1000:]}"
        )
    tps = next(float(line.split()[2]) for line in text.splitlines() if line.startswith("tps ="))
    latencies = _pgbench_latencies_ms(workdir)
    return {
        "tps": tps,
        "transactions": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


# -- the measurement -----------------------------------------------------------------
SERVICES = ("order-api", "goods-api", "order-relay", "goods-relay")


@dataclass
class _Setup:
    """What the trials run against: the working folder, the pgbench scripts and the service processes."""

    workdir: Path
    scripts: dict[str, Path]
    procs: dict[str, ManagedProcess]


@dataclass(frozen=True)
class _Profiling:
    """Whether and where to py-spy the APIs (first trial only)."""

    profile: bool
    results_dir: Path | None
    stamp: str

    def path(self, service: str, trial: int) -> Path | None:
        """The py-spy output of this service's API in this trial, or None when it is not profiled."""
        if self.profile and trial == 0 and self.results_dir is not None:
            return self.results_dir / f"{self.stamp}-{service}-api-pyspy.txt"
        return None


def _database_of(service: str) -> str:
    """The command database behind a service's API."""
    return "orders" if service == "order" else "goods"


async def _prepare(bs: BenchStack) -> tuple[str, Path]:
    """Topics of a new prefix and the working folder: (prefix, workdir)."""
    prefix = f"bench-write-{int(time.time())}-"
    await bs.create_topics(prefix)
    workdir = bs.config.state_dir / "bench-write"
    workdir.mkdir(parents=True, exist_ok=True)
    return prefix, workdir


async def _reset_databases(bs: BenchStack) -> None:
    """Empty the command databases' tables; create pgbench's tables and trigger in orders."""
    for db, tables in (("orders", "orders, outbox"), ("goods", "goods, outbox")):
        conn = await bs.connect(db)
        try:
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
            if db == "orders":
                await conn.execute(PG_SETUP)
        finally:
            await conn.close()


def _start_services(bs: BenchStack, prefix: str) -> dict[str, ManagedProcess]:
    """Start both APIs and both relays; wait for the APIs, and a moment for the relays."""
    procs = {name: bs.service(name, prefix) for name in SERVICES}
    for p in procs.values():
        p.start()
    bs.wait_ready(["order-api", "goods-api"])
    time.sleep(1.0)  # relays connected
    return procs


def _api_url(bs: BenchStack, service: str) -> str:
    """The base URL of a service's API."""
    return f"http://127.0.0.1:{bs.port_of(service + '-api')}"


async def _warm_up(bs: BenchStack, scale: Scale, workdir: Path) -> None:
    """A short warm-up of each API (connections, imports, caches)."""
    for service in ("order", "goods"):
        script = workdir / f"warm-{service}.lua"
        script.write_text(lua_script(service, 1000))
        await run_wrk_with_backlog(
            bs, _api_url(bs, service), script, scale.connections, 3, _database_of(service), f"warm-up {service}"
        )


async def _pgbench_trial(
    bs: BenchStack, scale: Scale, setup: _Setup, results: dict[str, list[dict[str, Any]]], trial: int
) -> None:
    """One trial of every pgbench script, each after a checkpoint."""
    for name, script_path in setup.scripts.items():
        await bs.checkpoint()
        results[name].append(
            await run_pgbench(
                bs, script_path, scale.connections, scale.pgbench_seconds, setup.workdir, f"{name[:28]} #{trial + 1}"
            )
        )


async def _max_order_id(bs: BenchStack, service: str) -> int:
    """The order ids the script draws from: the highest order id so far for goods, 1000 for orders."""
    max_order = 1000
    if service == "goods":
        conn = await bs.connect("orders")
        max_order = int(await conn.fetchval("SELECT coalesce(max(id), 1000) FROM orders"))
        await conn.close()
    return max_order


def _pids(bs: BenchStack, procs: dict[str, ManagedProcess], *names: str) -> list[int]:
    """PIDs of the named service processes and their children."""
    return [p for n in names for p in bs.tree_pids(procs[n])]


def _cpu_meter(bs: BenchStack, procs: dict[str, ManagedProcess], service: str) -> CpuMeter:
    """CPU of the service's API and relay, PostgreSQL and Kafka."""
    return CpuMeter(
        {
            f"{service}-api": lambda: _pids(bs, procs, f"{service}-api"),
            f"{service}-relay": lambda: _pids(bs, procs, f"{service}-relay"),
            "postgres": bs.postgres_pids,
            "kafka": bs.kafka_pids,
        }
    )


def _start_profiler(scale: Scale, api_pid: int | None, output: Path | None) -> Profiler | None:
    """py-spy of the API process for most of the wrk run, when it is profiled."""
    if output is None or api_pid is None:
        return None
    profiler = Profiler(api_pid, max(2.0, scale.wrk_seconds - 2), output)
    profiler.start()
    return profiler


async def _wrk_trial(
    bs: BenchStack, scale: Scale, setup: _Setup, profiling: _Profiling, service: str, trial: int
) -> dict[str, Any]:
    """One wrk trial of POST /v1/{service} after a checkpoint: rate, latency, backlog, CPU (and profile, statements)."""
    database = _database_of(service)
    max_order = await _max_order_id(bs, service)
    script = setup.workdir / f"{service}.lua"
    script.write_text(lua_script(service, max_order))
    meter = _cpu_meter(bs, setup.procs, service)
    api_pid = setup.procs[f"{service}-api"].pid()
    profiler = _start_profiler(scale, api_pid, profiling.path(service, trial))
    if trial == 0:
        await bs.reset_statement_stats()
    await bs.checkpoint()
    meter.start()
    result = await run_wrk_with_backlog(
        bs,
        _api_url(bs, service),
        script,
        scale.connections,
        scale.wrk_seconds,
        database,
        f"wrk POST /v1/{service} #{trial + 1}",
    )
    result["cpu_percent_of_one_core"] = meter.stop()
    if profiler is not None:
        result["profile_top"] = profiler.finish()
    if trial == 0:
        result["statements"] = await bs.statement_stats(database)
    return result


def _log_wrk_result(service: str, result: dict[str, Any]) -> None:
    """One log line on a wrk trial."""
    log(
        f"{service}: {result['rps']:,.0f} req/s, p50 {result['p50_us'] / 1000:.1f} ms, "
        f"p99 {result['p99_us'] / 1000:.1f} ms, errors {result['errors']}, "
        f"backlog max {result['backlog_max']}, drained in {result['drain_seconds']} s, "
        f"cpu {result['cpu_percent_of_one_core']}"
    )


async def _measure_trials(
    bs: BenchStack, scale: Scale, setup: _Setup, profiling: _Profiling
) -> dict[str, list[dict[str, Any]]]:
    """The trials: in each, every pgbench script, then wrk against each API."""
    results: dict[str, list[dict[str, Any]]] = {"order": [], "goods": [], **{name: [] for name in setup.scripts}}
    for trial in range(scale.wrk_trials):
        await _pgbench_trial(bs, scale, setup, results, trial)
        for service in ("order", "goods"):
            result = await _wrk_trial(bs, scale, setup, profiling, service, trial)
            results[service].append(result)
            _log_wrk_result(service, result)
    return results


async def _clean_up(bs: BenchStack, procs: dict[str, ManagedProcess]) -> None:
    """Drop pgbench's tables and trigger, then stop the services."""
    conn = await bs.connect("orders")
    try:
        await conn.execute(PG_TEARDOWN)
    finally:
        await conn.close()
    for p in procs.values():
        p.stop()


def _rate_cell(rps: list[float]) -> str:
    """Median (min to max) of the rates."""
    return f"{fmt(median(rps))} ({fmt(min(rps))}–{fmt(max(rps))})"


def _pgbench_row(name: str, trials: list[dict[str, Any]]) -> list[object]:
    """The table row of one pgbench script."""
    rps = [t["tps"] for t in trials]
    p50 = [t["p50_ms"] for t in trials]
    p99 = [t["p99_ms"] for t in trials]
    return [name, len(trials), _rate_cell(rps), median(p50), median(p99), "–", "–", "–", "–"]


def _wrk_row(name: str, trials: list[dict[str, Any]], bare_trials: list[dict[str, Any]]) -> list[object]:
    """The table row of one API under wrk, its rate also as a share of the bare INSERT rate."""
    rps = [t["rps"] for t in trials]
    p50 = [t["p50_us"] / 1000 for t in trials]
    p99 = [t["p99_us"] / 1000 for t in trials]
    drains = [t["drain_seconds"] if t["drain_seconds"] is not None else float("inf") for t in trials]
    bare = median([t["tps"] for t in bare_trials])
    return [
        f"POST /v1/{name} (wrk, HTTP, relay running)",
        len(trials),
        _rate_cell(rps),
        median(p50),
        median(p99),
        sum(t["errors"] for t in trials),
        max(t["backlog_max"] for t in trials),
        max(drains),
        f"{fmt(100 * ratio(median(rps), bare))}%",
    ]


def _report_table(
    section: Section, scale: Scale, scripts: dict[str, Path], results: dict[str, list[dict[str, Any]]]
) -> None:
    """The results' data, and the table of every load."""
    section.data.update(results)
    rows: list[list[object]] = []
    for name in (*scripts, "order", "goods"):
        trials = results[name]
        if name in scripts:
            rows.append(_pgbench_row(name, trials))
        else:
            rows.append(_wrk_row(name, trials, results[next(iter(scripts))]))
    section.table(
        f"{scale.connections} connections/clients, {scale.wrk_seconds:.0f} s per wrk trial, "
        f"{scale.pgbench_seconds:.0f} s per pgbench trial; "
        "req/s or tx/s: median (min–max) of trials; latency ms: median of trials",
        [
            "load",
            "trials",
            "req/s or tx/s",
            "p50 ms",
            "p99 ms",
            "errors / non-2xx",
            "outbox backlog max",
            "drain after stop s",
            "share of bare INSERT rate",
        ],
        rows,
    )


def _report_services(section: Section, results: dict[str, list[dict[str, Any]]]) -> None:
    """Per API: CPU, and the statements and profile of its first trial; then a note on the method."""
    for service in ("order", "goods"):
        section.note(
            f"CPU during POST /v1/{service} (% of one core): "
            f"{[t['cpu_percent_of_one_core'] for t in results[service]]}; "
            f"wrk itself: {[t['wrk_cpu_percent_of_one_core'] for t in results[service]]}"
        )
        statements = results[service][0].get("statements") if results[service] else None
        if statements:
            section.table(
                f"pg_stat_statements in database {_database_of(service)} during POST /v1/{service} (trial 1)",
                ["statement", "calls", "total ms", "mean ms", "rows"],
                statements,
            )
        top = results[service][0].get("profile_top") if results[service] else None
        if top:
            section.table(
                f"py-spy of the {service} API process during wrk: hottest frames",
                ["frame", "self %", "inclusive %"],
                [[f, s, i] for f, s, i in top],
            )
    section.note(
        "wrk runs one thread (-t1) with a Lua script; the APIs are single uvicorn processes as `make up` starts them. "
        "Backlog: unpublished outbox rows, sampled every 0.5 s; "
        "drain: time from wrk's exit until the backlog is 0 (polled every 20 ms)."
    )


def _report_goals(report: Report, context: dict[str, float], results: dict[str, list[dict[str, Any]]]) -> None:
    """Per API: the goals on rate, p99 and backlog drain; the rate also goes to `context` (for freshness)."""
    for service in ("order", "goods"):
        runs = results[service]
        rate = median([t["rps"] for t in runs])
        tail = median([t["p99_us"] / 1000 for t in runs])
        worst_drain = max((t["drain_seconds"] if t["drain_seconds"] is not None else float("inf")) for t in runs)
        context[f"{service}_rps"] = rate
        report.goal("3 write", f"POST /v1/{service} req/s", rate, "req/s", ">= 1,500 req/s", rate >= 1500)
        report.goal("3 write", f"POST /v1/{service} p99", tail, "ms", "<= 50 ms", tail <= 50)
        report.goal(
            "3 write",
            f"{service} relay backlog drained after load (worst trial)",
            worst_drain,
            "s",
            "<= 5 s",
            worst_drain <= 5,
        )


async def run(
    bs: BenchStack,
    scale: Scale,
    report: Report,
    context: dict[str, float],
    profile: bool = False,
    results_dir: Path | None = None,
) -> None:
    """Measurement 3: prepare, start the services, warm up, run the pgbench and wrk trials, clean up, and report."""
    section = report.section("write", "3. Write path: POST under 64 connections, relays running")
    prefix, workdir = await _prepare(bs)
    await _reset_databases(bs)
    scripts = pgbench_scripts(workdir)
    procs = _start_services(bs, prefix)
    await _warm_up(bs, scale, workdir)

    setup = _Setup(workdir, scripts, procs)
    profiling = _Profiling(profile, results_dir, f"{report.started:%Y%m%dT%H%M%S}-{scale.name}")
    try:
        results = await _measure_trials(bs, scale, setup, profiling)
    finally:
        await _clean_up(bs, procs)

    _report_table(section, scale, scripts, results)
    _report_services(section, results)
    _report_goals(report, context, results)
