"""4. Freshness: from a write's 2xx to its visibility in GET /v1/order-history/{order_id}.

Background load: two paced wrk processes (Lua `delay`) POST orders and goods at
half the maximum rates measured in 3 (or, when run alone, measured here with a
short unpaced wrk run). Meanwhile probe workers, spread over the run, each
create an order and then a goods item for it, and poll the order-history API
every 10 ms until the change shows: the order at all, then the goods item in
the order's `goods` list. Then each writes an order and a goods item once more
and sends at once a GET carrying the write's Consistency-Token: the time to
its 200 is what a client that reads its own writes waits. Everything runs as
in `make up`: the APIs, both relays and the consumer are separate processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from devstack.processes import ManagedProcess
from shared.command.outbox import UNPUBLISHED_SQL

from .config import Scale
from .env import BenchStack, log
from .projection import reset_read_model
from .report import Report, Section, fmt
from .stats import CpuMeter, LatencySummary, percentile
from .writes import lua_script, parse_wrk, run_wrk_with_backlog, wrk_argv

POLL_S = 0.010
PACED_CONNECTIONS = 16


async def visible(client: httpx.AsyncClient, order_id: int, goods_id: int | None, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/order-history/{order_id}")
        if response.status_code == 200 and (
            goods_id is None or any(g["id"] == goods_id for g in response.json()["goods"])
        ):
            return time.monotonic()
        await asyncio.sleep(POLL_S)
    return None


async def probe_worker(
    ports: dict[str, int],
    start_at: list[float],
    results: dict[str, list[tuple[float, float]]],
    bar: tqdm[Any],
    timeout: float,
    load_ends: float,
) -> None:
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['order']}", timeout=10) as orders,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['goods']}", timeout=10) as goods,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['history']}", timeout=10) as history,
    ):
        for when in start_at:
            delay = when - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() > load_ends:
                results["skipped"].append((when, 0.0))  # the background load is over: not a probe under load
                bar.update()
                continue
            response = await orders.post("/v1/order", json={"user_id": 4242})
            acked = time.monotonic()
            if response.status_code != 201:
                results["errors"].append((when, float(response.status_code)))
                continue
            order_id = int(response.json()["id"])
            seen = await visible(history, order_id, None, timeout)
            results["order"].append((when, (seen - acked) * 1000 if seen else float("inf")))
            response = await goods.post("/v1/goods", json={"order_id": order_id, "name": "probe"})
            acked = time.monotonic()
            if response.status_code != 201:
                results["errors"].append((when, float(response.status_code)))
                continue
            seen = await visible(history, order_id, int(response.json()["id"]), timeout)
            results["goods"].append((when, (seen - acked) * 1000 if seen else float("inf")))
            for kind, write in (
                ("tokened_order", orders.post("/v1/order", json={"user_id": 4243})),
                ("tokened_goods", goods.post("/v1/goods", json={"order_id": order_id, "name": "tokened"})),
            ):
                response = await write
                acked = time.monotonic()
                if response.status_code != 201:
                    results["errors"].append((when, float(response.status_code)))
                    continue
                read = await history.get(
                    f"/v1/order-history/{response.json().get('order_id', response.json()['id'])}",
                    headers={"Consistency-Token": response.headers["Consistency-Token"], "Prefer": "wait=10"},
                )
                done = time.monotonic()
                results[kind].append((when, (done - acked) * 1000 if read.status_code == 200 else float("inf")))
            bar.update()


async def sample_lag(bs: BenchStack, prefix: str, group: str, stop: asyncio.Event, out: list[dict[str, float]]) -> None:
    """Every 0.5 s: unpublished outbox rows per command database, and events not yet applied by the consumer."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    conns = {db: await bs.connect(db) for db in ("orders", "goods", "order_history")}
    kafka = AIOKafkaConsumer(bootstrap_servers=bs.stack.kafka.bootstrap, group_id=None)
    await kafka.start()
    tps = [
        TopicPartition(prefix + t, p)
        for t in ("order.events", "goods.events")
        for p in range(bs.config.kafka_partitions)
    ]
    started = time.monotonic()
    try:
        while not stop.is_set():
            sample = {"t": round(time.monotonic() - started, 2)}
            for db in ("orders", "goods"):
                sample[f"outbox_{db}"] = int(await conns[db].fetchval(UNPUBLISHED_SQL))
            applied = int(
                await conns["order_history"].fetchval(
                    "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer_group = $1", group
                )
            )
            ends = await kafka.end_offsets(tps)
            sample["consumer_lag"] = int(sum(ends.values())) - applied
            out.append(sample)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
    finally:
        await kafka.stop()
        for conn in conns.values():
            await conn.close()


def paced_wrk(url: str, script: Path, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        wrk_argv(url, script, PACED_CONNECTIONS, seconds), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {err.decode(errors='replace')[-1000:]}")
    return parse_wrk(out.decode())


SERVICES = ["order-api", "goods-api", "order_history-api", "order-relay", "goods-relay", "order_history-consumer"]
PROBE_WORKERS = 4


@dataclass(frozen=True)
class _ProbeSchedule:
    """When each probe worker starts its probes: spread over the run, and when the load is considered over."""

    workers: int
    per_worker: int
    t0: float
    spacing: float
    load_ends: float

    @classmethod
    def starting_now(cls, scale: Scale) -> _ProbeSchedule:
        duration = scale.freshness_seconds
        workers = PROBE_WORKERS
        per_worker = max(1, scale.freshness_probes // workers)
        t0 = time.monotonic()
        spacing = (duration - 2.0) / per_worker
        return cls(workers, per_worker, t0, spacing, t0 + duration - 1.0)

    def start_times(self, worker: int) -> list[float]:
        """The start times of one worker's probes."""
        return [self.t0 + (i + worker / self.workers) * self.spacing for i in range(self.per_worker)]


@dataclass
class _Measured:
    """What the probes, the background load and the samplers measured."""

    results: dict[str, list[tuple[float, float]]]
    cpu: dict[str, float]
    load_results: dict[str, dict[str, Any]]
    lag_samples: list[dict[str, float]]
    statements: list[list[object]]


async def _prepare(bs: BenchStack) -> tuple[str, Path]:
    """Topics of a new prefix, an empty read model and the working folder: (prefix, workdir)."""
    prefix = f"bench-fresh-{int(time.time())}-"
    await bs.create_topics(prefix)
    await reset_read_model(bs)
    workdir = bs.config.state_dir / "bench-fresh"
    workdir.mkdir(parents=True, exist_ok=True)
    return prefix, workdir


async def start_services(bs: BenchStack, prefix: str) -> dict[str, ManagedProcess]:
    """Start the APIs, both relays and the consumer as in `make up`; wait for the APIs and the consumer's group."""
    procs = {name: bs.service(name, prefix) for name in SERVICES}
    for p in procs.values():
        p.start()
    bs.wait_ready(["order-api", "goods-api", "order_history-api"])
    await asyncio.sleep(3.0)  # the consumer joins its group
    return procs


async def _target_rates(
    bs: BenchStack, scale: Scale, context: dict[str, float], urls: dict[str, str], workdir: Path
) -> dict[str, float]:
    """Half the maximum rates: from measurement 3 when it ran, else a short unpaced run here (kept in `context`)."""
    for service in ("order", "goods"):
        if f"{service}_rps" not in context:
            script = workdir / f"max-{service}.lua"
            script.write_text(lua_script(service, 1000))
            result = await run_wrk_with_backlog(
                bs,
                urls[service],
                script,
                scale.connections,
                8,
                "orders" if service == "order" else "goods",
                f"max rate {service}",
            )
            context[f"{service}_rps"] = result["rps"]
    return {s: context[f"{s}_rps"] / 2 for s in ("order", "goods")}


def _calibrate_delays(urls: dict[str, str], targets: dict[str, float], workdir: Path) -> dict[str, float]:
    """Per-connection wrk delays for the targets; calibration steps correct for the response time."""
    delays = {s: PACED_CONNECTIONS * 1000.0 / targets[s] for s in targets}
    for _ in range(2):
        calib = {}
        for s in targets:
            script = workdir / f"paced-{s}.lua"
            script.write_text(lua_script(s, 1000, delays[s]))
            calib[s] = paced_wrk(urls[s], script, 3)
        for s, proc in calib.items():
            achieved = finish(proc)["rps"]
            latency_ms = max(0.0, PACED_CONNECTIONS * 1000.0 / max(achieved, 1.0) - delays[s])
            delays[s] = max(0.0, PACED_CONNECTIONS * 1000.0 / targets[s] - latency_ms)
    return delays


async def _max_order_id(bs: BenchStack) -> int:
    """The highest order id so far (1000 when there are none): the range the paced goods script draws from."""
    conn = await bs.connect("orders")
    max_order = int(await conn.fetchval("SELECT coalesce(max(id), 1000) FROM orders"))
    await conn.close()
    return max_order


async def _start_background_load(
    urls: dict[str, str], delays: dict[str, float], workdir: Path, max_order: int, duration: float
) -> dict[str, subprocess.Popen[bytes]]:
    """Start the paced wrk processes for the run (and 3 s more), then let them settle for 2 s."""
    loads = {}
    for s, delay in delays.items():
        script = workdir / f"paced-{s}.lua"
        script.write_text(lua_script(s, max_order, delay))
        loads[s] = paced_wrk(urls[s], script, duration + 3)
    await asyncio.sleep(2.0)
    return loads


def _cpu_meter(bs: BenchStack, procs: dict[str, ManagedProcess]) -> CpuMeter:
    """CPU of every service process, PostgreSQL and Kafka."""
    return CpuMeter(
        {
            **{n: (lambda n=n: bs.tree_pids(procs[n])) for n in SERVICES},  # type: ignore[misc]
            "postgres": bs.postgres_pids,
            "kafka": bs.kafka_pids,
        }
    )


async def _run_probes(bs: BenchStack, schedule: _ProbeSchedule, results: dict[str, list[tuple[float, float]]]) -> None:
    """The probe workers, each on its share of the schedule, with a progress bar."""
    ports = {
        "order": bs.port_of("order-api"),
        "goods": bs.port_of("goods-api"),
        "history": bs.port_of("order_history-api"),
    }
    with tqdm(total=schedule.per_worker * schedule.workers, desc="freshness probes", unit="probe") as bar:
        await asyncio.gather(
            *[
                probe_worker(ports, schedule.start_times(w), results, bar, 10.0, schedule.load_ends)
                for w in range(schedule.workers)
            ]
        )


async def _measure_under_load(
    bs: BenchStack,
    scale: Scale,
    procs: dict[str, ManagedProcess],
    prefix: str,
    loads: dict[str, subprocess.Popen[bytes]],
) -> _Measured:
    """Probe freshness while the load runs; meanwhile CPU, backlogs and statements; then collect the load's results."""
    meter = _cpu_meter(bs, procs)
    await bs.reset_statement_stats()
    meter.start()
    schedule = _ProbeSchedule.starting_now(scale)
    results: dict[str, list[tuple[float, float]]] = {
        "order": [],
        "goods": [],
        "tokened_order": [],
        "tokened_goods": [],
        "errors": [],
        "skipped": [],
    }
    lag_samples: list[dict[str, float]] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(bs, prefix, f"{prefix}order-history", stop_sampling, lag_samples))
    await _run_probes(bs, schedule, results)
    cpu = meter.stop()
    load_results = {s: finish(p) for s, p in loads.items()}
    stop_sampling.set()
    await sampler
    statements = await bs.statement_stats("order_history")
    return _Measured(results, cpu, load_results, lag_samples, statements)


def _time_windows(samples: list[tuple[float, float]]) -> list[list[float]]:
    """Trials: the probes in three consecutive time windows."""
    ordered = [v for _, v in sorted(samples)]
    third = max(1, len(ordered) // 3)
    return [ordered[i * third : (i + 1) * third if i < 2 else len(ordered)] for i in range(3)]


def _summary_row(label: str, s: LatencySummary) -> list[object]:
    """The table row of one kind of change."""
    return [label, s.samples, s.p50, s.p99, s.p99_worst, s.pooled_p50, s.pooled_p99, s.max]


def _report_freshness(
    section: Section, targets: dict[str, float], m: _Measured, duration: float
) -> tuple[list[float], float, float]:
    """The latency data and table, and the background load's note: (all latencies, pooled p50, pooled p99)."""
    order_s = LatencySummary.of(_time_windows(m.results["order"]))
    goods_s = LatencySummary.of(_time_windows(m.results["goods"]))
    everything = [v for _, v in m.results["order"] + m.results["goods"]]
    pooled_p50, pooled_p99 = percentile(everything, 50), percentile(everything, 99)
    section.data.update(
        targets_rps=targets,
        background=m.load_results,
        order=order_s.as_dict(),
        goods=goods_s.as_dict(),
        all_p50_ms=pooled_p50,
        all_p99_ms=pooled_p99,
        errors=len(m.results["errors"]),
        cpu_percent_of_one_core=m.cpu,
        raw_order_ms=[v for _, v in m.results["order"]],
        raw_goods_ms=[v for _, v in m.results["goods"]],
    )
    section.table(
        "ms from the write's 2xx to the first GET /v1/order-history/{id} that shows it (polled every 10 ms); "
        "median over 3 time windows of each window's p50/p99, and all probes pooled",
        ["change", "probes", "p50", "p99", "p99 worst window", "pooled p50", "pooled p99", "max"],
        [
            _summary_row("new order visible", order_s),
            _summary_row("new goods in its order's list", goods_s),
            ["both", len(everything), "–", "–", "–", pooled_p50, pooled_p99, max(everything, default=float("nan"))],
        ],
    )
    tokened_order = LatencySummary.of(_time_windows(m.results["tokened_order"]))
    tokened_goods = LatencySummary.of(_time_windows(m.results["tokened_goods"]))
    section.data.update(tokened_order=tokened_order.as_dict(), tokened_goods=tokened_goods.as_dict())
    section.table(
        "ms from a write's 2xx to the answer of a GET /v1/order-history/{id} sent at once with its "
        "Consistency-Token (Prefer: wait=10): read your own writes, no polling",
        ["write, then its tokened read", "probes", "p50", "p99", "p99 worst window", "pooled p50", "pooled p99", "max"],
        [_summary_row("new order", tokened_order), _summary_row("new goods", tokened_goods)],
    )
    bg = ", ".join(
        f"POST /v1/{s}: target {fmt(targets[s])} req/s, achieved {fmt(r['rps'])} req/s "
        f"(p99 {fmt(r['p99_us'] / 1000)} ms, "
        f"{r['errors']} errors)"
        for s, r in m.load_results.items()
    )
    section.note(f"Background load (paced wrk, {PACED_CONNECTIONS} connections each, {duration:.0f} s): {bg}.")
    return everything, pooled_p50, pooled_p99


def _report_backlogs(section: Section, lag_samples: list[dict[str, float]]) -> None:
    """The backlog samples, and a table of a few of them and their maxima."""
    section.data["lag_samples"] = lag_samples
    if not lag_samples:
        return
    picks = [lag_samples[min(len(lag_samples) - 1, int(q * (len(lag_samples) - 1)))] for q in (0.25, 0.5, 0.75, 1.0)]
    rows: list[list[object]] = [
        [s["t"], int(s["outbox_orders"]), int(s["outbox_goods"]), int(s["consumer_lag"])] for s in picks
    ]
    rows.append(
        [
            "max",
            max(int(s["outbox_orders"]) for s in lag_samples),
            max(int(s["outbox_goods"]) for s in lag_samples),
            max(int(s["consumer_lag"]) for s in lag_samples),
        ]
    )
    section.table(
        "Backlogs during the run, sampled every 0.5 s (the last sample is after the load stopped)",
        [
            "seconds into the run",
            "unpublished outbox rows, orders",
            "unpublished outbox rows, goods",
            "events the consumer has not applied",
        ],
        rows,
    )


def _report_errors_and_goal(
    section: Section, report: Report, m: _Measured, everything: list[float], p50: float, p99: float
) -> None:
    """Statements, errors and CPU; the log line and the goal."""
    if m.statements:
        section.table(
            "pg_stat_statements in order_history during the probes",
            ["statement", "calls", "total ms", "mean ms", "rows"],
            m.statements,
        )
    section.note(
        f"Probe errors (non-201): {len(m.results['errors'])}; probes not run because the load had ended: "
        f"{len(m.results['skipped'])}. CPU (% of one core): {m.cpu}"
    )
    log(f"freshness: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(everything)} probes")
    report.goal(
        "4 freshness",
        "2xx -> visible in GET /v1/order-history/{id}, p99",
        p99,
        "ms",
        "<= 500 ms",
        p99 <= 500,
    )


async def run(bs: BenchStack, scale: Scale, report: Report, context: dict[str, float]) -> None:
    """Measurement 4: start the services, pace the background load, probe under it, and report."""
    section = report.section("freshness", "4. Freshness under load")
    prefix, workdir = await _prepare(bs)
    procs = await start_services(bs, prefix)
    urls = {s: f"http://127.0.0.1:{bs.port_of(s + '-api')}" for s in ("order", "goods")}
    try:
        targets = await _target_rates(bs, scale, context, urls, workdir)
        delays = _calibrate_delays(urls, targets, workdir)
        max_order = await _max_order_id(bs)
        loads = await _start_background_load(urls, delays, workdir, max_order, scale.freshness_seconds)
        measured = await _measure_under_load(bs, scale, procs, prefix, loads)
    finally:
        for p in procs.values():
            p.stop()

    everything, pooled_p50, pooled_p99 = _report_freshness(section, targets, measured, scale.freshness_seconds)
    _report_backlogs(section, measured.lag_samples)
    _report_errors_and_goal(section, report, measured, everything, pooled_p50, pooled_p99)
