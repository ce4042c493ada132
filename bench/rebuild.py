"""Measurement 5: `order-history rebuild` of the projection's event stream, and the list query meanwhile.

The stream of measurement 2 (scale.events events) is produced and a consumer
builds the serving read model from it. Then the list query is timed over HTTP
for `rebuild_probe_seconds` with nothing else running (the baseline), and
again while `order-history rebuild` runs as its own process, until it has
switched over. Every answer during the rebuild must be a 200, and the read
model after the switch must equal the generator's state.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from . import projection
from .config import LIMIT, THRESHOLDS, Scale
from .env import BenchStack, log
from .report import Report
from .stats import LatencySummary
from .timing import HttpClient

_PREFIX = "bench-rebuild-"
_GROUP = "bench-rebuild"


def _paths() -> list[str]:
    return [f"/v1/order-history?threshold={t}&limit={LIMIT}&offset=0" for t in THRESHOLDS]


def _probe(client: HttpClient, paths: list[str], n: int, failed: list[int]) -> float:
    latency, status, _ = client.get(paths[n % len(paths)])
    if status != 200:
        failed.append(status)
    return latency


async def run(bs: BenchStack, scale: Scale, report: Report) -> None:
    section = report.section("rebuild", "5. Rebuild of the read model beside the serving one")
    await bs.create_topics(_PREFIX)
    await projection.reset_read_model(bs)
    gen, produced = await projection.produce(bs, _PREFIX, scale.events)
    total = await projection.end_offsets(bs, _PREFIX)
    built = await projection.run_consumer_trial(bs, _PREFIX, _GROUP, total, scale.projection_timeout_s, None, 0)
    log(f"serving model built from {total:,} events in {built['seconds_from_start']:.1f} s")
    bs.stop_processes()  # the consumer that built it (stopped already) is not watched by wait_ready
    api = bs.service("order_history-api", _PREFIX)
    api.start()
    bs.wait_ready(["order_history-api"])
    client = HttpClient(bs.port_of("order_history-api"))
    paths = _paths()
    failed: list[int] = []
    try:
        for n in range(50):  # warm up
            _probe(client, paths, n, failed)
        quiet: list[float] = []
        until = time.monotonic() + scale.rebuild_probe_seconds
        while time.monotonic() < until:
            quiet.append(_probe(client, paths, len(quiet), failed))
            await asyncio.sleep(0)
        proc = bs.process(
            "rebuild", ["order_history", "rebuild", "--switch-lag", "0"], _PREFIX, ORDER_HISTORY_CONSUMER_GROUP=_GROUP
        )
        started = time.monotonic()
        proc.start()
        during: list[float] = []
        while proc.exit_status() is None:
            if time.monotonic() - started > scale.projection_timeout_s:
                raise RuntimeError(f"rebuild did not finish in {scale.projection_timeout_s:.0f}s")
            during.append(_probe(client, paths, len(during), failed))
            await asyncio.sleep(0)
        seconds = time.monotonic() - started
        status = proc.exit_status()
        if status != 0:
            raise RuntimeError(f"rebuild exited {status}; last lines of {proc.log_file}:\n{proc.tail()}")
    finally:
        client.close()
    summary = next((line for line in proc.tail(5).splitlines() if line.startswith("rebuilt")), "")
    match = re.search(r"\(([0-9]+) events/s\)", summary)
    checked = await projection.verify(bs, gen)
    q, d = LatencySummary.of([quiet]), LatencySummary.of([during])
    first_build = float(built["seconds_from_start"])
    section.table(
        f"`order-history rebuild` of {total:,} events, with the list query timed meanwhile "
        f"(thresholds {', '.join(map(str, THRESHOLDS))}, limit {LIMIT}, one HTTP client)",
        ["", "seconds", "events/s", "list p50 ms", "list p99 ms", "requests", "non-200"],
        [
            [
                "serving model's first build (consumer)",
                f"{first_build:.1f}",
                f"{total / first_build:,.0f}",
                "",
                "",
                "",
                "",
            ],
            ["list query, nothing else running", "", "", f"{q.p50:.2f}", f"{q.p99:.2f}", f"{q.samples:,}", ""],
            [
                "rebuild, list query meanwhile",
                f"{seconds:.1f}",
                f"{int(match.group(1)) if match else total / seconds:,.0f}",
                f"{d.p50:.2f}",
                f"{d.p99:.2f}",
                f"{d.samples:,}",
                f"{len(failed)}",
            ],
        ],
    )
    section.note(f"The command's summary: `{summary}`")
    section.note(f"After the switch the read model equals the generator's state: {checked['correct']} ({checked}).")
    data: dict[str, Any] = {
        "events": total,
        "produced": produced,
        "first_build": built,
        "rebuild_seconds": seconds,
        "summary": summary,
        "quiet": q.as_dict(),
        "during": d.as_dict(),
        "non_200": failed,
        "verify": checked,
    }
    section.data.update(data)
    report.goal(
        "5 rebuild", "list query answers during the rebuild that were not 200", float(len(failed)), "", "0", not failed
    )
    report.goal(
        "5 rebuild",
        "read model after the switch equals the generator's",
        float(checked["correct"]),
        "",
        "true",
        checked["correct"],
    )
