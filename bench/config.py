"""Scales of a run: full (the issue's figures) and quick (a few minutes)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from order_history.settings import Settings

THRESHOLDS = (0, 5, 10, 15, 20, 30)
OFFSETS = (0, 1000)
LIMIT = 50
# The bench API runs with the default settings: its creation skew, for the direct calls of the list query.
SKEW = dt.timedelta(seconds=Settings().created_at_skew)
# The bench read model's largest user's orders (user 1's); every other user has from 1 to this many.
USER_MAX_ORDERS = 10_000


@dataclass(frozen=True)
class Scale:
    name: str
    # 1. query
    orders: int
    goods: int
    query_trials: int  # trials per (threshold, offset), interleaved with the baseline
    query_requests: int  # requests per trial and path (HTTP, direct, direct with generic plans)
    query_batch_seconds: float  # ... or fewer: a batch stops after this long once it has 5 samples
    baseline_runs: int  # executions of the original query per (threshold, offset)
    baseline_timeout_s: float
    # 2. projection
    events: int
    projection_trials: int
    naive_seconds: float
    projection_timeout_s: float
    # 3. write path
    wrk_seconds: float
    wrk_trials: int
    pgbench_seconds: float
    connections: int = 64
    # 4. freshness
    freshness_probes: int = 200
    freshness_seconds: float = 60.0
    # 5. rebuild: the list query's latency before and during a rebuild of `events` events
    rebuild_probe_seconds: float = 20.0
    # 6. soak: windows at max rate from a clean start, then at a fraction of the first window's rates
    soak_window_seconds: float = 60.0
    soak_max_windows: int = 6
    soak_fixed_windows: int = 8
    soak_fixed_fraction: float = 0.5
    # 7. scale-out: events of the apply-rate runs; the paced rate and the time after each change of the group
    scaleout_events: int = 600_000
    scaleout_rate: int = 2000
    scaleout_settle_seconds: float = 20.0
    # 8. memory: one consumer on a paced stream for this long
    memory_minutes: float = 40.0
    memory_rate: int = 3000
    # catch-ups in the run's second half: the consumer stopped (SIGSTOP) this long, under the
    # session timeout, then left to apply the backlog in batches as large as they come
    memory_pauses: int = 4
    memory_pause_seconds: float = 8.0
    # the consumer's extra environment in the projection and memory runs, "NAME=VALUE,NAME=VALUE"
    # (e.g. ORDER_HISTORY_BATCH_MAX_RECORDS=5000 or MALLOC_ARENA_MAX=2): settings and allocator variants
    consumer_env: str = ""


FULL = Scale(
    name="full",
    orders=1_000_000,
    goods=10_000_000,
    query_trials=3,
    query_requests=400,
    query_batch_seconds=2.0,
    baseline_runs=3,
    baseline_timeout_s=120.0,
    events=1_000_000,
    projection_trials=2,
    naive_seconds=30.0,
    projection_timeout_s=600.0,
    wrk_seconds=20.0,
    wrk_trials=2,
    pgbench_seconds=10.0,
    freshness_probes=300,
    freshness_seconds=60.0,
)

QUICK = Scale(
    name="quick",
    orders=100_000,
    goods=1_000_000,
    query_trials=3,
    query_requests=100,
    query_batch_seconds=0.5,
    baseline_runs=3,
    baseline_timeout_s=60.0,
    events=100_000,
    projection_trials=2,
    naive_seconds=10.0,
    projection_timeout_s=180.0,
    wrk_seconds=10.0,
    wrk_trials=2,
    pgbench_seconds=8.0,
    freshness_probes=150,
    freshness_seconds=40.0,
    soak_window_seconds=20.0,
    soak_max_windows=3,
    soak_fixed_windows=5,
    scaleout_events=150_000,
    scaleout_rate=1000,
    scaleout_settle_seconds=15.0,
    memory_minutes=4.0,
    memory_pauses=2,
)
