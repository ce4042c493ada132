"""6. Soak: a steady mixed load on a growing state, and whether anything degrades.

`python -m bench --only soak` (about 15 minutes in the full scale, 3 in quick).

Every service runs as in `make up` (both APIs, relays, consumer, the
order-history API). Three wrk processes drive a mixed load, one per API (Lua
scripts: creates, moves, renames and deletes of goods; creates, user changes
and deletes of orders; list pages by threshold, a user's newest orders, and
order details). Updates and deletes name random ids of entities created so far,
so some answer 404 (deleted meanwhile): those count as answered requests, not
as errors. The run is cut into windows (a minute in the full scale); each
window is one wrk run per API, and a sampler records every 2 s what the state
does meanwhile.

1. **Max rate**: from a clean start (empty databases, new topics, a
   CHECKPOINT), unpaced wrk for `soak_max_windows` windows: the ceiling as the
   state grows.
2. **Fixed rate**: on the state the max-rate run left, paced wrk at
   `soak_fixed_fraction` of the first window's rates for `soak_fixed_windows`
   windows: latency, freshness and backlogs at a rate the stack can hold.
3. **Noise**: a clean start again (the same reset, services restarted) and one
   window at max rate: how far two first windows of the same run differ.

Per window: requests/s, p50/p99 per API, freshness (a probe creates an order
every 0.25 s and polls until GET /v1/order-history/{id} shows it), outbox rows
and size on disk, consumer lag, dead tuples and autovacuum runs of the
tables that grow, WAL written, checkpoints, and each service process's RSS.
The report has the table and a PNG plot (matplotlib) beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack.processes import ManagedProcess
from shared.events import TOPICS

from .config import Scale
from .env import BenchStack, log
from .freshness import start_services, visible
from .projection import reset_read_model
from .report import Report, Section, fmt, pyplot
from .stats import median, percentile, ratio, rss_mib
from .writes import lua_done, parse_wrk, wrk_argv

MAX_CONNECTIONS = {"order": 32, "goods": 32, "history": 8}
PACED_CONNECTIONS = {"order": 16, "goods": 16, "history": 4}
SAMPLE_S = 2.0
PROBE_EVERY_S = 0.25
USERS = 10_000
# The tables that grow under the load, per database: their dead tuples and autovacuum runs.
GROWING = {"orders": ("orders", "outbox"), "goods": ("goods", "outbox"), "order_history": ("orders", "goods")}
# A window's figures may differ from the first by this much and still count as flat.
FLAT_TOLERANCE = 1.25

# Counts answers by class in each thread; done() adds them up (wrk runs
# response() in the threads' Lua states, done() in the main one).
_LUA_COUNT_ANSWERS = r"""
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  math.randomseed(os.time() + SEED)
  answered_ok = 0; answered_404 = 0; answered_other = 0
end
function response(status, headers, body)
  if status < 300 then answered_ok = answered_ok + 1
  elseif status == 404 then answered_404 = answered_404 + 1
  else answered_other = answered_other + 1 end
end
"""
_LUA_DONE = lua_done(
    prelude="""  local ok, nf, other = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("answered_ok"); nf = nf + t:get("answered_404"); other = other + t:get("answered_other")
  end
""",
    extra={"ok": "ok", "not_found": "nf", "other": "other"},
)

_REQUESTS = {
    # 60% create, 25% change of user, 15% delete
    "order": """
function request()
  local r = math.random()
  if r < 0.60 then
    return wrk.format("POST", "/v1/order", nil, '{"user_id": ' .. math.random(1, USERS) .. '}')
  elseif r < 0.85 then
    return wrk.format("PATCH", "/v1/order/" .. math.random(1, MAX_ORDER), nil,
      '{"user_id": ' .. math.random(1, USERS) .. '}')
  else
    return wrk.format("DELETE", "/v1/order/" .. math.random(1, MAX_ORDER))
  end
end
""",
    # 50% create, 20% move, 20% rename, 10% delete
    "goods": """
function request()
  local r = math.random()
  if r < 0.50 then
    return wrk.format("POST", "/v1/goods", nil,
      '{"order_id": ' .. math.random(1, MAX_ORDER) .. ', "name": "soak"}')
  elseif r < 0.70 then
    return wrk.format("PATCH", "/v1/goods/" .. math.random(1, MAX_GOODS), nil,
      '{"order_id": ' .. math.random(1, MAX_ORDER) .. '}')
  elseif r < 0.90 then
    return wrk.format("PATCH", "/v1/goods/" .. math.random(1, MAX_GOODS), nil,
      '{"name": "renamed ' .. math.random(1, 1000) .. '"}')
  else
    return wrk.format("DELETE", "/v1/goods/" .. math.random(1, MAX_GOODS))
  end
end
""",
    # 40% a page by threshold, 30% a user's newest orders, 30% an order's detail
    "history": """
function request()
  local r = math.random()
  if r < 0.40 then
    return wrk.format("GET", "/v1/order-history?threshold=" .. math.random(0, 5) .. "&limit=50")
  elseif r < 0.70 then
    return wrk.format("GET", "/v1/order-history?user_id=" .. math.random(1, USERS) .. "&sort=-created_at&limit=20")
  else
    return wrk.format("GET", "/v1/order-history/" .. math.random(1, MAX_ORDER))
  end
end
""",
}


def lua_script(api: str, max_order: int, max_goods: int, seed: int, delay_ms: float = 0.0) -> str:
    """The mixed load of one API; ids drawn from those created so far; `delay_ms` paces each connection."""
    constants = f"SEED = {seed}\nUSERS = {USERS}\nMAX_ORDER = {max(1, max_order)}\nMAX_GOODS = {max(1, max_goods)}\n"
    delay = f"function delay() return {delay_ms:.3f} end\n" if delay_ms > 0 else ""
    return constants + _LUA_COUNT_ANSWERS + _REQUESTS[api] + delay + _LUA_DONE


@dataclass
class Window:
    """One window of the run: each API's wrk summary and what the sampler and the probe saw."""

    phase: str
    index: int
    started: float  # seconds since the last clean start
    seconds: float  # the window's length
    wrk: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    freshness_ms: list[float] = field(default_factory=list)
    autovacuums: int = 0
    wal_mib: float = 0.0
    checkpoints: int = 0

    def rps(self, *apis: str) -> float:
        return sum(float(self.wrk[a]["rps"]) for a in apis if a in self.wrk)

    def p(self, api: str, q: str) -> float:
        return float(self.wrk[api][f"{q}_us"]) / 1000 if api in self.wrk else math.nan

    def last(self, key: str) -> float:
        return float(self.samples[-1][key]) if self.samples else math.nan

    def most(self, key: str) -> float:
        return max((float(s[key]) for s in self.samples), default=math.nan)

    def writes_p99(self) -> float:
        """The worse of the two write APIs' p99 (ms)."""
        return max(self.p("order", "p99"), self.p("goods", "p99"))

    def unexpected(self) -> int:
        return sum(int(w["other"]) + int(w["errors"]) - int(w["status_errors"]) for w in self.wrk.values())

    def row(self) -> list[object]:
        fresh = self.freshness_ms
        rss = self.samples[-1]["rss_mib"] if self.samples else {}
        return [
            f"{self.phase} {self.index + 1}",
            round(self.started),
            self.rps("order", "goods"),
            self.rps("history"),
            self.p("order", "p99"),
            self.p("goods", "p99"),
            self.p("history", "p99"),
            percentile(fresh, 50),
            percentile(fresh, 99),
            int(self.last("outbox_rows")),
            self.last("outbox_mib"),
            int(self.most("consumer_lag")),
            int(self.last("dead_tuples")),
            self.autovacuums,
            self.wal_mib,
            max(rss.values(), default=math.nan),
            self.unexpected(),
        ]


HEADERS = [
    "window",
    "s",
    "writes/s",
    "reads/s",
    "order p99 ms",
    "goods p99 ms",
    "reads p99 ms",
    "freshness p50 ms",
    "freshness p99 ms",
    "outbox rows",
    "outbox MiB",
    "consumer lag max",
    "dead tuples",
    "autovacuums",
    "WAL MiB",
    "largest RSS MiB",
    "errors",
]


class Soak:
    """The services, the load per window, the sampler and the probe of one run."""

    def __init__(self, bs: BenchStack, scale: Scale, workdir: Path) -> None:
        self.bs = bs
        self.scale = scale
        self.workdir = workdir
        self.prefix = ""
        self.procs: dict[str, ManagedProcess] = {}
        self.t0 = 0.0
        self.seed = 0

    # -- state -----------------------------------------------------------------
    async def clean_start(self) -> None:
        """Stop the services, empty every database, new topics, a CHECKPOINT; start the services."""
        self.stop()
        for db, tables in (("orders", "orders, outbox"), ("goods", "goods, outbox")):
            conn = await self.bs.connect(db)
            try:
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
            finally:
                await conn.close()
        await reset_read_model(self.bs)  # and a CHECKPOINT
        self.prefix = f"bench-soak-{int(time.time() * 1000)}-"
        await self.bs.create_topics(self.prefix)
        self.procs = await start_services(self.bs, self.prefix)
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.bs.stop_processes()  # the services are the bench stack's only processes here
        self.procs = {}

    async def _max_ids(self) -> tuple[int, int]:
        ids = []
        for db, table in (("orders", "orders"), ("goods", "goods")):
            conn = await self.bs.connect(db)
            try:
                ids.append(int(await conn.fetchval(f"SELECT coalesce(max(id), 0) FROM {table}")))
            finally:
                await conn.close()
        return ids[0], ids[1]

    # -- one window ------------------------------------------------------------
    async def window(
        self, phase: str, index: int, delays: dict[str, float] | None, seconds: float | None = None
    ) -> Window:
        """One window: a wrk per API (paced by `delays` ms per connection, else unpaced), the sampler, the probe."""
        seconds = seconds or self.scale.soak_window_seconds
        max_order, max_goods = await self._max_ids()
        w = Window(phase, index, time.monotonic() - self.t0, seconds)
        procs = {}
        for api in ("order", "goods", "history"):
            self.seed += 1
            script = self.workdir / f"{phase}-{api}.lua"
            script.write_text(
                lua_script(api, max(max_order, 1000), max(max_goods, 1000), self.seed, (delays or {}).get(api, 0.0))
            )
            connections = (PACED_CONNECTIONS if delays else MAX_CONNECTIONS)[api]
            port = self.bs.port_of(f"{'order_history' if api == 'history' else api}-api")
            procs[api] = await asyncio.create_subprocess_exec(
                *wrk_argv(f"http://127.0.0.1:{port}", script, connections, seconds),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        stop = asyncio.Event()
        before = await self._counters()
        tasks = [asyncio.create_task(self._sample(w, stop)), asyncio.create_task(self._probe(w, stop))]
        try:
            for api, proc in procs.items():
                out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
                if proc.returncode != 0:
                    raise RuntimeError(f"wrk ({api}) failed: {err.decode(errors='replace')[-1000:]}")
                w.wrk[api] = parse_wrk(out.decode())
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for proc in procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        after = await self._counters()
        w.autovacuums = after["autovacuums"] - before["autovacuums"]
        w.checkpoints = after["checkpoints"] - before["checkpoints"]
        w.wal_mib = round((after["wal"] - before["wal"]) / 2**20, 1)
        self._check_alive()
        row = w.row()
        log(
            f"soak {phase} {index + 1}: writes {fmt(row[2])}/s, reads {fmt(row[3])}/s, "
            f"p99 order/goods/reads {fmt(row[4])}/{fmt(row[5])}/{fmt(row[6])} ms, freshness p99 {fmt(row[8])} ms, "
            f"outbox rows {row[9]}, dead tuples {row[12]}"
        )
        return w

    def _check_alive(self) -> None:
        for p in self.procs.values():
            if p.exited_early():
                raise RuntimeError(f"{p.name} exited during the soak; last lines of {p.log_file}:\n{p.tail()}")

    async def _counters(self) -> dict[str, int]:
        """Autovacuum runs of the growing tables, checkpoints and the WAL position (cumulative)."""
        autovacuums = 0
        for db, tables in GROWING.items():
            conn = await self.bs.connect(db)
            try:
                autovacuums += int(
                    await conn.fetchval(
                        "SELECT coalesce(sum(autovacuum_count), 0) FROM pg_stat_user_tables WHERE relname = ANY($1)",
                        list(tables),
                    )
                )
            finally:
                await conn.close()
        conn = await self.bs.connect("orders")
        try:
            row = await conn.fetchrow(
                """SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS wal,
                          (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) AS checkpoints"""
            )
        finally:
            await conn.close()
        assert row is not None
        return {"autovacuums": autovacuums, "checkpoints": int(row["checkpoints"]), "wal": int(row["wal"])}

    async def _sample(self, w: Window, stop: asyncio.Event) -> None:
        """Every SAMPLE_S: outbox rows and backlog, consumer lag, dead tuples, each service's RSS."""
        conns = {db: await self.bs.connect(db) for db in GROWING}
        kafka = AIOKafkaConsumer(bootstrap_servers=self.bs.stack.kafka.bootstrap, group_id=None)
        await kafka.start()
        tps = [TopicPartition(self.prefix + t, p) for t in TOPICS for p in range(self.bs.config.kafka_partitions)]
        group = f"{self.prefix}order-history"
        try:
            while True:
                sample: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1)}
                sample["outbox_rows"] = 0
                sample["outbox_mib"] = 0.0
                sample["dead_tuples"] = 0
                for db, tables in GROWING.items():
                    conn = conns[db]
                    if "outbox" in tables:
                        row = await conn.fetchrow(
                            "SELECT count(*) AS n, pg_total_relation_size('outbox') AS size FROM outbox"
                        )
                        assert row is not None
                        sample["outbox_rows"] += int(row["n"])
                        sample["outbox_mib"] = round(sample["outbox_mib"] + int(row["size"]) / 2**20, 1)
                    sample["dead_tuples"] += int(
                        await conn.fetchval(
                            "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = ANY($1)",
                            list(tables),
                        )
                    )
                applied = int(
                    await conns["order_history"].fetchval(
                        "SELECT coalesce(sum(next_offset), 0) FROM consumer_positions WHERE consumer_group = $1",
                        group,
                    )
                )
                ends = await kafka.end_offsets(tps)
                sample["consumer_lag"] = int(sum(ends.values())) - applied
                sample["rss_mib"] = {
                    name: round(sum(rss_mib(pid) for pid in self.bs.tree_pids(p)), 1) for name, p in self.procs.items()
                }
                w.samples.append(sample)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=SAMPLE_S)
                if stop.is_set():
                    return
        finally:
            await kafka.stop()
            for conn in conns.values():
                await conn.close()

    async def _probe(self, w: Window, stop: asyncio.Event) -> None:
        """Every PROBE_EVERY_S (or when the last probe ends): create an order, then time until the
        order-history API shows it."""
        order = f"http://127.0.0.1:{self.bs.port_of('order-api')}"
        history = f"http://127.0.0.1:{self.bs.port_of('order_history-api')}"
        async with (
            httpx.AsyncClient(base_url=order, timeout=10) as orders,
            httpx.AsyncClient(base_url=history, timeout=10) as reads,
        ):
            while not stop.is_set():
                started = time.monotonic()
                response = await orders.post("/v1/order", json={"user_id": 1})
                acked = time.monotonic()
                if response.status_code == 201:
                    seen = await visible(reads, int(response.json()["id"]), None, 30.0)
                    w.freshness_ms.append((seen - acked) * 1000 if seen else math.inf)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))


def paced_delays(first: Window, fraction: float) -> dict[str, float]:
    """Per-connection delays (ms) for `fraction` of the first window's rates (the latency, small
    below the ceiling, is taken off by `adjust` after the first paced window)."""
    return {
        api: connections * 1000.0 / max(1.0, first.rps(api) * fraction)
        for api, connections in PACED_CONNECTIONS.items()
    }


def adjust(delays: dict[str, float], w: Window, first: Window, fraction: float) -> dict[str, float]:
    """The next paced window's delays, corrected by what this one achieved (so the rate stays fixed)."""
    out = {}
    for api, connections in PACED_CONNECTIONS.items():
        target = max(1.0, first.rps(api) * fraction)
        latency_ms = max(0.0, connections * 1000.0 / max(w.rps(api), 1.0) - delays[api])
        out[api] = max(0.0, connections * 1000.0 / target - latency_ms)
    return out


async def run(bs: BenchStack, scale: Scale, report: Report, results_dir: Path) -> None:
    """Measurement 6: the max-rate soak from a clean start, the fixed-rate soak, a clean first window again."""
    section = report.section("soak", "6. Soak: a steady mixed load on a growing state")
    workdir = bs.config.state_dir / "bench-soak"
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(bs, scale, workdir)
    windows: list[Window] = []
    try:
        await soak.clean_start()
        for i in range(scale.soak_max_windows):
            windows.append(await soak.window("max", i, None))
        first = windows[0]
        delays = paced_delays(first, scale.soak_fixed_fraction)
        # A short paced window first, not reported: it measures the latency the delays must allow for.
        calibration = await soak.window("calibration", 0, delays, seconds=5.0)
        delays = adjust(delays, calibration, first, scale.soak_fixed_fraction)
        for i in range(scale.soak_fixed_windows):
            windows.append(await soak.window("fixed", i, delays))
            delays = adjust(delays, windows[-1], first, scale.soak_fixed_fraction)
        await soak.clean_start()
        windows.append(await soak.window("clean again", 0, None))
    finally:
        soak.stop()
    _report(section, report, windows, scale, results_dir)


def _report(section: Section, report: Report, windows: list[Window], scale: Scale, results_dir: Path) -> None:
    maxed = [w for w in windows if w.phase == "max"]
    fixed = [w for w in windows if w.phase == "fixed"]
    again = [w for w in windows if w.phase == "clean again"]
    section.table(
        f"Per window of {scale.soak_window_seconds:.0f} s: max rate from a clean start, then "
        f"{scale.soak_fixed_fraction:.0%} of the first window's rates on the grown state, then a clean start "
        "and max rate again (requests/s answered, 404s of deleted entities included; p99 from wrk; freshness "
        "from a probe every 0.25 s; outbox and dead tuples at the window's end, both command databases and the "
        "read model)",
        HEADERS,
        [w.row() for w in windows],
    )
    section.data["windows"] = [dataclasses.asdict(w) for w in windows]
    plot = _plot(windows, results_dir, report)
    if plot is not None:
        section.note(f"Plot: `{plot.name}` beside this report.")
    rss_first = maxed[0].samples[-1]["rss_mib"] if maxed and maxed[0].samples else {}
    rss_last = (fixed or maxed)[-1].samples[-1]["rss_mib"] if (fixed or maxed)[-1].samples else {}
    section.table(
        "RSS of each service process (MiB, with its workers) at the end of the first and of the last soak window",
        ["process", "first window", "last window", "growth"],
        [[n, rss_first.get(n, math.nan), v, ratio(v, rss_first.get(n, math.nan))] for n, v in rss_last.items()],
    )
    if maxed:
        ceiling = ratio(maxed[-1].rps("order", "goods"), maxed[0].rps("order", "goods"))
        report.goal(
            "6 soak", "max rate: last window's writes/s / first window's", ceiling * 100, "%", ">= 90%", ceiling >= 0.9
        )
    if maxed and again:
        noise = ratio(again[0].rps("order", "goods"), maxed[0].rps("order", "goods"))
        section.note(
            f"Noise: the first window after a clean restart gave {fmt(again[0].rps('order', 'goods'))} writes/s, "
            f"{fmt(noise * 100)}% of the first window's {fmt(maxed[0].rps('order', 'goods'))}."
        )
    if fixed:
        for label, key in (("writes p99", "write"), ("freshness p99", "fresh")):
            values = [_p99_of(w, key) for w in fixed]
            # Halves, not single windows: one window's p99 is noisy on these machines; a trend moves the median.
            half = len(values) // 2
            spread = ratio(median(values[-half:]), median(values[:half])) if half else math.nan
            report.goal(
                "6 soak",
                f"fixed rate: {label}, median window of the second half / of the first half",
                spread,
                "x",
                f"<= {FLAT_TOLERANCE}",
                spread <= FLAT_TOLERANCE,
            )
        written = sum(int(w.wrk[api]["ok"]) for w in maxed + fixed for api in ("order", "goods") if api in w.wrk)
        outbox = fixed[-1].last("outbox_rows")
        report.goal(
            "6 soak",
            "outbox rows at the end (both databases), as a share of the writes of the soak",
            ratio(outbox, written) * 100,
            "%",
            f"<= 1% ({written:,} writes)",
            outbox <= written / 100,
        )
        growth = [ratio(v, rss_first.get(n, math.nan)) for n, v in rss_last.items()]
        report.goal(
            "6 soak",
            "largest RSS growth of a service process, first to last window",
            (max(growth, default=math.nan) - 1) * 100,
            "%",
            "<= 10%",
            max(growth, default=math.nan) <= 1.10,
        )


def _p99_of(w: Window, key: str) -> float:
    return percentile(w.freshness_ms, 99) if key == "fresh" else w.writes_p99()


def _plot(windows: list[Window], results_dir: Path, report: Report) -> Path | None:
    """The windows' figures over time as a PNG beside the report (None without matplotlib)."""
    plt = pyplot("soak")
    if plt is None:
        return None
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=False)
    minutes = {id(w): (w.started + w.seconds) / 60 for w in windows}
    for phase, marker in (("max", "o"), ("fixed", "s"), ("clean again", "^")):
        ws = [w for w in windows if w.phase == phase]
        if not ws:
            continue
        x = [minutes[id(w)] for w in ws]
        writes_p99 = [w.writes_p99() for w in ws]
        rss = [max(w.samples[-1]["rss_mib"].values(), default=math.nan) if w.samples else math.nan for w in ws]
        axes[0][0].plot(x, [w.rps("order", "goods") for w in ws], marker=marker, label=f"{phase}: writes/s")
        axes[0][1].plot(x, writes_p99, marker=marker, label=f"{phase}: writes")
        axes[0][1].plot(x, [w.p("history", "p99") for w in ws], marker=marker, linestyle=":", label=f"{phase}: reads")
        axes[1][0].plot(x, [percentile(w.freshness_ms, 99) for w in ws], marker=marker, label=phase)
        axes[1][1].plot(x, [w.last("outbox_rows") for w in ws], marker=marker, label=f"{phase}: outbox rows")
        axes[1][1].plot(x, [w.most("consumer_lag") for w in ws], marker=marker, linestyle=":", label=f"{phase}: lag")
        axes[2][0].plot(x, [w.last("dead_tuples") for w in ws], marker=marker, label=phase)
        axes[2][1].plot(x, rss, marker=marker, label=phase)
    titles = [
        ("writes/s (order + goods APIs)", "req/s"),
        ("p99 latency", "ms"),
        ("freshness p99 (2xx to visible)", "ms"),
        ("outbox rows and consumer lag", "rows / events"),
        ("dead tuples of the growing tables", "tuples"),
        ("largest service RSS", "MiB"),
    ]
    for ax, (title, unit) in zip([a for row in axes for a in row], titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("minutes since the clean start")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Soak ({report.scale}), {report.started:%Y-%m-%d %H:%M} UTC")
    fig.tight_layout()
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.started:%Y%m%dT%H%M%S}-{report.scale}-soak.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
