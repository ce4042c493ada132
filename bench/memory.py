"""8. The consumer's memory over a long steady stream: does its resident size level off?

The soak saw the consumer's RSS rise by a few MiB over 14 minutes. This runs
one consumer process for `memory_minutes` on a paced stream of mixed events
(the projection's Generator, `memory_rate` per second, so that the read model
grows as in production), scrapes its /metrics as Prometheus would, and
samples, every SAMPLE_S seconds, its resident size and the part of it that is
anonymous memory (the heap: Python objects, C buffers, allocator arenas; the
rest is mapped code and libraries). The report
gives the size at marks through the run and the growth per minute in each
quarter: memory that levels off grows less in each quarter than in the one
before, a leak grows alike in all four.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request

from aiokafka import AIOKafkaProducer

from devstack.processes import free_port

from .config import Scale
from .env import BenchStack, log, step
from .projection import Generator, reset_read_model
from .report import Report, Section
from .scaleout import paced
from .stats import proc_mib, rss_mib

SAMPLE_S = 10.0
KEYS = ("rss_mib", "anonymous_mib", "heap_mib")


def anonymous_mib(pid: int) -> float:
    """Anonymous resident memory of a process in MiB (0 if it is gone)."""
    return proc_mib(pid, "smaps_rollup", "Anonymous")


def heap_mib(pid: int) -> float:
    """Resident size of the [heap] mapping in MiB: glibc's main arena, grown by brk.

    The rest of the anonymous memory is mmap'd: pymalloc's arenas and large
    blocks. Which of the two grows tells fragmentation of small C allocations
    from Python objects kept alive.
    """
    inside = False
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                if line[0] in "0123456789abcdef" and " " in line and "-" in line.split(" ", 1)[0]:
                    inside = line.rstrip().endswith("[heap]")
                elif inside and line.startswith("Rss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def extra_env(spec: str) -> dict[str, str]:
    """ "A=1,B=2" as a dict; empty for ""."""
    pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
    return {name.strip(): value.strip() for name, value in pairs}


def scrape(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        response.read()


def slope(samples: list[dict[str, float]], start: float, end: float, key: str) -> float:
    """Least-squares growth of `key` in MiB per minute between two times (minutes)."""
    window = [(s["minute"], s[key]) for s in samples if start <= s["minute"] <= end]
    if len(window) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in window) / len(window)
    mean_y = sum(y for _, y in window) / len(window)
    var = sum((x - mean_x) ** 2 for x, _ in window)
    return sum((x - mean_x) * (y - mean_y) for x, y in window) / var if var else float("nan")


async def run(bs: BenchStack, scale: Scale, report: Report) -> None:
    section = Section("memory", f"The consumer's memory over {scale.memory_minutes:.0f} minutes")
    report.sections.append(section)
    prefix = f"bench-mem-{int(time.time())}-"
    await bs.create_topics(prefix)
    await reset_read_model(bs)
    gen = Generator(seed=13)
    producer = AIOKafkaProducer(bootstrap_servers=bs.stack.kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    stop = asyncio.Event()
    load = asyncio.create_task(paced(producer, prefix, gen, scale.memory_rate, stop))
    port = free_port()
    env = extra_env(scale.memory_env)
    proc = bs.process(
        "memory-consumer", ["order_history", "consumer"], prefix, ORDER_HISTORY_METRICS_PORT=str(port), **env
    )
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        with step(f"one consumer for {scale.memory_minutes:.0f} min at {scale.memory_rate:,} events/s"):
            proc.start()
            while (elapsed := time.monotonic() - started) < scale.memory_minutes * 60:
                if load.done():
                    load.result()  # the producer failed: say why
                if proc.exited_early():
                    raise RuntimeError(f"the consumer exited; last lines of {proc.log_file}:\n{proc.tail()}")
                pid = proc.pid()
                with contextlib.suppress(OSError):  # scraped as Prometheus would, in case that holds memory
                    await asyncio.to_thread(scrape, port)
                if pid is not None:
                    samples.append(
                        {
                            "minute": elapsed / 60,
                            "rss_mib": rss_mib(pid),
                            "anonymous_mib": anonymous_mib(pid),
                            "heap_mib": heap_mib(pid),
                        }
                    )
                await asyncio.sleep(SAMPLE_S)
    finally:
        stop.set()
        sent = await load
        await producer.stop()
        proc.stop(timeout=10)
    total = scale.memory_minutes
    marks = sorted({1.0, total / 4, total / 2, 3 * total / 4, total})
    rows: list[list[object]] = []
    for mark in marks:
        nearest = min(samples, key=lambda s: abs(s["minute"] - mark))
        rows.append([round(nearest["minute"], 1), *(round(nearest[key], 1) for key in KEYS)])
    variant = f", environment {scale.memory_env}" if scale.memory_env else ""
    section.table(
        f"Resident size of the consumer; {sent:,} events at {scale.memory_rate:,} events/s{variant}",
        ["minute", "RSS MiB", "anonymous MiB", "[heap] MiB"],
        rows,
    )
    quarters: list[list[object]] = []
    for q in range(4):
        start, end = max(0.5, q * total / 4), (q + 1) * total / 4  # without the first 30 s: the start
        quarters.append([f"{start:.0f}–{end:.0f}"] + [round(slope(samples, start, end, key), 3) for key in KEYS])
    section.table(
        "Growth per quarter (least squares), MiB per minute", ["minutes", "RSS", "anonymous", "[heap]"], quarters
    )
    section.data["samples"] = samples
    section.data["events"] = sent
    log(f"memory: {rows}; quarters {quarters}")
    section.data["summary"] = {"rows": rows, "quarters": quarters}
