"""8. The consumer's memory over a long steady stream: does its resident size level off?

The soak saw the consumer's RSS rise by a few MiB over 14 minutes. This runs
one consumer process for `memory_minutes` on a paced stream of mixed events
(the projection's Generator, `memory_rate` per second, so that the read model
grows as in production), scrapes its /metrics as Prometheus would (keeping its
lag and how many large parts it applied), and samples, every SAMPLE_S
seconds, its resident size, the part of it that is anonymous memory (Python
objects, C buffers, allocator arenas; the rest is mapped code and libraries)
and the part of that in glibc's main arena ([heap]). The report gives the size
at marks through the run and the growth per minute in each quarter: memory
that levels off grows less in each quarter than in the one before, a leak
grows alike in all four. In the second half the consumer is stopped
`memory_pauses` times for `memory_pause_seconds` (SIGSTOP, under the session
timeout) and then catches up in batches as large as they come: memory held
after the largest batch so far is a bound, memory that grows again after every
catch-up is not. A PNG plot goes beside the report. `consumer_env` runs
the consumer with more environment (settings or allocator variants, e.g.
MALLOC_ARENA_MAX=2 or PYTHONMALLOC=malloc).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import ManagedProcess, free_port

from .config import Scale
from .env import BenchStack, extra_env, log, step
from .projection import Generator, reset_read_model
from .report import Report, Section, pyplot
from .scaleout import paced
from .stats import proc_mib, rss_mib

SAMPLE_S = 10.0
LARGE_PART = 2500  # a bucket of consumer_batch_events
START_MINUTES = 0.5  # the process starting and its first fetches: left out of slopes and plots
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


def scrape(port: int) -> dict[str, float]:
    """The consumer's /metrics, read as Prometheus would: its lag (summed over partitions) and how
    many parts so far held more than LARGE_PART events (a lagging consumer fetches larger batches,
    and the allocator keeps what the largest one needed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lag = parts = small = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "consumer_lag_events":
                lag += sample.value
            elif sample.name == "consumer_batch_events_count":
                parts = sample.value
            elif sample.name == "consumer_batch_events_bucket" and sample.labels.get("le") == str(float(LARGE_PART)):
                small = sample.value
    return {"lag": lag, "large_parts": parts - small}


def slope(samples: list[dict[str, float]], start: float, end: float, key: str) -> float:
    """Least-squares growth of `key` in MiB per minute between two times (minutes)."""
    window = [(s["minute"], s[key]) for s in samples if start <= s["minute"] <= end]
    if len(window) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in window) / len(window)
    mean_y = sum(y for _, y in window) / len(window)
    var = sum((x - mean_x) ** 2 for x, _ in window)
    return sum((x - mean_x) * (y - mean_y) for x, y in window) / var if var else float("nan")


def pause_minutes(scale: Scale) -> list[float]:
    """When the catch-ups start: spread over the run's second half, the first half steady."""
    total, n = scale.memory_minutes, scale.memory_pauses
    return [total / 2 + (i + 0.5) * total / 2 / n for i in range(n)] if n else []


async def catch_ups(
    proc: ManagedProcess, scale: Scale, started: float, paused: asyncio.Event, pauses: list[float]
) -> None:
    """Stop the consumer for memory_pause_seconds at each of pause_minutes, then let it catch up."""
    for minute in pause_minutes(scale):
        await asyncio.sleep(max(0.0, started + minute * 60 - time.monotonic()))
        pid = proc.pid()
        if pid is None:
            return  # the sampling loop reports a consumer that exited
        os.kill(pid, signal.SIGSTOP)
        paused.set()
        pauses.append((time.monotonic() - started) / 60)
        try:
            await asyncio.sleep(scale.memory_pause_seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
            paused.clear()


async def run(bs: BenchStack, scale: Scale, report: Report, results_dir: Path) -> None:
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
    env = extra_env(scale.consumer_env)
    proc = bs.process(
        "memory-consumer", ["order_history", "consumer"], prefix, ORDER_HISTORY_METRICS_PORT=str(port), **env
    )
    samples: list[dict[str, float]] = []
    paused = asyncio.Event()
    pauses: list[float] = []  # minutes at which the consumer was stopped
    started = time.monotonic()
    catching_up: asyncio.Task[None] | None = None
    try:
        with step(
            f"one consumer for {scale.memory_minutes:.0f} min at {scale.memory_rate:,} events/s, "
            f"{scale.memory_pauses} catch-up(s) after {scale.memory_pause_seconds:.0f} s stopped"
        ):
            proc.start()
            catching_up = asyncio.create_task(catch_ups(proc, scale, started, paused, pauses))
            while (elapsed := time.monotonic() - started) < scale.memory_minutes * 60:
                if load.done():
                    load.result()  # the producer failed: say why
                if proc.exited_early():
                    raise RuntimeError(f"the consumer exited; last lines of {proc.log_file}:\n{proc.tail()}")
                pid = proc.pid()
                if catching_up.done():
                    catching_up.result()  # stopping or resuming failed: say why
                scraped = {"lag": math.nan, "large_parts": math.nan}
                if not paused.is_set():  # a stopped process cannot answer
                    with contextlib.suppress(OSError):  # scraped as Prometheus would, in case that holds memory
                        scraped = await asyncio.to_thread(scrape, port)
                if pid is not None:
                    samples.append(
                        {
                            "minute": elapsed / 60,
                            "rss_mib": rss_mib(pid),
                            "anonymous_mib": anonymous_mib(pid),
                            "heap_mib": heap_mib(pid),
                            "peak_mib": proc_mib(pid, "status", "VmHWM"),
                            **scraped,
                        }
                    )
                await asyncio.sleep(SAMPLE_S)
    finally:
        if catching_up is not None:
            catching_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await catching_up
        if paused.is_set() and (pid := proc.pid()) is not None:
            os.kill(pid, signal.SIGCONT)
        stop.set()
        sent = await load
        await producer.stop()
        proc.stop(timeout=10)
    _report(section, samples, pauses, sent, scale, report, results_dir)


def _report(
    section: Section,
    samples: list[dict[str, float]],
    pauses: list[float],
    sent: int,
    scale: Scale,
    report: Report,
    results_dir: Path,
) -> None:
    total = scale.memory_minutes
    marks = sorted({1.0, total / 4, total / 2, 3 * total / 4, total})
    rows: list[list[object]] = []
    for mark in marks:
        nearest = min(samples, key=lambda s: abs(s["minute"] - mark))
        rows.append(
            [round(nearest["minute"], 1), *(round(nearest[key], 1) for key in KEYS), round(nearest["peak_mib"], 1)]
        )
    variant = f", environment {scale.consumer_env}" if scale.consumer_env else ""
    section.table(
        f"Resident size of the consumer; {sent:,} events at {scale.memory_rate:,} events/s{variant}",
        ["minute", "RSS MiB", "anonymous MiB", "[heap] MiB", "peak RSS so far MiB"],
        rows,
    )
    quarters: list[list[object]] = []
    for q in range(4):
        start, end = max(START_MINUTES, q * total / 4), (q + 1) * total / 4
        quarters.append([f"{start:.0f}–{end:.0f}"] + [round(slope(samples, start, end, key), 3) for key in KEYS])
    section.table(
        "Growth per quarter (least squares), MiB per minute", ["minutes", "RSS", "anonymous", "[heap]"], quarters
    )
    if pauses:
        section.table(
            f"Catch-ups: the consumer stopped for {scale.memory_pause_seconds:.0f} s (a backlog of about "
            f"{scale.memory_rate * scale.memory_pause_seconds:,.0f} events), then left to apply it; sizes in MiB "
            f"just before the stop and {AFTER_S:.0f} s after the resume",
            [
                "minute",
                f"parts > {LARGE_PART:,} events so far",
                "RSS before",
                "RSS after",
                "[heap] before",
                "[heap] after",
                "peak RSS after",
            ],
            [
                catch_up_row(samples, minute, scale.memory_pause_seconds, until)
                for minute, until in zip(pauses, [*pauses[1:], math.inf], strict=True)
            ],
        )
    section.data["samples"] = samples
    section.data["pauses"] = pauses
    section.data["events"] = sent
    image = plot(samples, pauses, results_dir / f"{report.started:%Y%m%dT%H%M%S}-{report.scale}-memory.png", scale)
    if image is not None:
        section.note(f"Plot: `{image.name}` beside this report.")
    log(f"memory: {rows}; quarters {quarters}")
    section.data["summary"] = {"rows": rows, "quarters": quarters}


def plot(samples: list[dict[str, float]], pauses: list[float], path: Path, scale: Scale) -> Path | None:
    """Memory, lag and large parts over the run, the catch-ups marked, as a PNG (None without matplotlib)."""
    plt = pyplot("memory")
    if plt is None:
        return None
    samples = [s for s in samples if s["minute"] >= START_MINUTES]
    minutes = [s["minute"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for key, label in zip(KEYS, ("RSS", "anonymous", "[heap] (glibc main arena)"), strict=True):
        top.plot(minutes, [s.get(key, math.nan) for s in samples], label=label)
    top.set_ylabel("MiB")
    variant = f", {scale.consumer_env}" if scale.consumer_env else ""
    top.set_title(f"The consumer's memory at {scale.memory_rate:,} events/s{variant}")
    bottom.plot(minutes, [s.get("lag", math.nan) for s in samples], label="lag (events)")
    twin = bottom.twinx()
    twin.plot(
        minutes,
        [s.get("large_parts", math.nan) for s in samples],
        color="tab:red",
        label=f"parts > {LARGE_PART} events (cumulative)",
    )
    bottom.set_ylabel("events")
    twin.set_ylabel("parts")
    bottom.set_xlabel("minutes")
    for ax in (top, bottom, twin):
        ax.legend(loc="upper left" if ax is not twin else "upper right", fontsize=8)
    for minute in pauses:
        for ax in (top, bottom):
            ax.axvline(minute, color="grey", linestyle="--", linewidth=0.8)
    top.grid(True, alpha=0.3)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


AFTER_S = 60.0


def catch_up_row(samples: list[dict[str, float]], minute: float, pause_s: float, until: float) -> list[object]:
    """The sizes before the stop at `minute` and up to AFTER_S after the resume (never past `until`,
    the next stop)."""
    before = [s for s in samples if s["minute"] < minute]
    resumed = minute + pause_s / 60
    after = [s for s in samples if resumed <= s["minute"] <= min(resumed + AFTER_S / 60, until)]
    if not before or not after:
        return [round(minute, 1), "–", "–", "–", "–", "–", "–"]
    return [
        round(minute, 1),
        next((int(s["large_parts"]) for s in reversed(after) if not math.isnan(s["large_parts"])), "–"),
        round(before[-1]["rss_mib"], 1),
        round(after[-1]["rss_mib"], 1),
        round(before[-1]["heap_mib"], 1),
        round(after[-1]["heap_mib"], 1),
        round(after[-1]["peak_mib"], 1),
    ]
