"""Percentiles over repeated trials, and CPU accounting of processes."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of `samples`."""
    if not samples:
        return math.nan
    data = sorted(samples)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencySummary:
    """Latencies (ms) of several trials: the median over trials of each trial's p50 and p99.

    `p99_worst` is the worst trial's p99, `pooled_*` the percentiles of all samples together.
    """

    trials: int
    samples: int
    p50: float
    p99: float
    p99_worst: float
    pooled_p50: float
    pooled_p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, trials: Sequence[Sequence[float]]) -> LatencySummary:
        trials = [t for t in trials if t]
        pooled = [x for t in trials for x in t]
        if not pooled:
            nan = math.nan
            return cls(0, 0, nan, nan, nan, nan, nan, nan, nan)
        p50s = [percentile(t, 50) for t in trials]
        p99s = [percentile(t, 99) for t in trials]
        return cls(
            trials=len(trials),
            samples=len(pooled),
            p50=statistics.median(p50s),
            p99=statistics.median(p99s),
            p99_worst=max(p99s),
            pooled_p50=percentile(pooled, 50),
            pooled_p99=percentile(pooled, 99),
            mean=statistics.fmean(pooled),
            max=max(pooled),
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "trials": self.trials,
            "samples": self.samples,
            "p50_ms": self.p50,
            "p99_ms": self.p99,
            "p99_worst_trial_ms": self.p99_worst,
            "pooled_p50_ms": self.pooled_p50,
            "pooled_p99_ms": self.pooled_p99,
            "mean_ms": self.mean,
            "max_ms": self.max,
        }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(numerator: float, denominator: float) -> float:
    if denominator <= 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


# -- CPU accounting ------------------------------------------------------------
_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # fields[0] is state (field 3); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def proc_mib(pid: int, file: str, field: str) -> float:
    """A "Field:  N kB" line of /proc/<pid>/<file>, in MiB (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (0 if it is gone)."""
    return proc_mib(pid, "status", "VmRSS")


def children_of(parent: int) -> list[int]:
    """Direct children of `parent` (PostgreSQL backends are children of the postmaster)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            out.append(int(entry.name))
    return out


class CpuMeter:
    """CPU time used by named groups of processes between start() and stop(), in % of one core.

    Backends that exit during the interval are not counted (PostgreSQL keeps
    pooled connections open, so this hardly matters here).
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._t0 = 0.0
        self._machine0 = (0.0, 0.0)
        self.result: dict[str, float] = {}

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {pid: _cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self._start = self._snapshot()
        self._machine0 = machine_jiffies()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        wall = max(time.monotonic() - self._t0, 1e-9)
        self.result = {}
        for name, pids in end.items():
            before = self._start.get(name, {})
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())
            self.result[name] = round(100.0 * used / wall, 1)
        busy, total = machine_jiffies()
        cores = os.cpu_count() or 1
        share = (busy - self._machine0[0]) / max(total - self._machine0[1], 1.0)
        self.result["whole machine"] = round(100.0 * share * cores, 1)
        return self.result


def machine_jiffies() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return float(total - idle), float(total)
