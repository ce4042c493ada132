"""The consumer process's watch over its read model: the divergence sampler's steps and the trust figures.

Every consumer process (`order-history consumer`) runs one `TrustWatch`
beside its consumer, so the sampler needs no process, deployment or
supervision of its own and its metrics come out of the consumer's /metrics
port. Every `divergence_interval` it:

1. tries the sampler's lock, a session-level PostgreSQL advisory lock on a
   connection of its own to the read database: of all the consumer processes
   of a read model, the one holding it samples, the others stand by and try
   again next interval. A process that dies, or stays silent past the
   session's idle timeout (a hung or stopped process), loses its session and
   so the lock; another takes it over and resumes the pass from the state in
   the read database;
2. if it holds the lock, runs one sampler step (order_history/ops/sampler.py),
   reading the command databases through their reader roles;
3. reads the figures from the read database (the sampler's state, which
   every instance exports alike, and the orphan goods) into the metrics.

Nothing here stops or slows the consumer: its connections are its own, a
failure (a database down, a reader role that cannot log in, a bug) is logged
and retried at the next interval after a backoff, and the ages the metrics
export go on growing meanwhile, so that the alerts see a sampler that stopped.

Those metrics are defined here, beside the only code that writes them, and
come out of the consumer's /metrics port with its own (they use the gauge
helpers of order_history/consumer/metrics.py, which imports nothing of ops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Final

import asyncpg
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import Metric

from order_history.consumer.metrics import Gauge, ScrapedGauges
from order_history.ops import orphans, sampler
from order_history.ops.reconciler import Reconciler
from order_history.settings import Settings
from shared.backoff import Backoff

log = logging.getLogger(__name__)

LOCK_KEY: Final = 0x73616D706C6572  # "sampler": one sampling instance per read database
_COMMAND_TIMEOUT: Final = 60.0

SAMPLED_RANGES: Final = Counter(
    "read_model_reconcile_ranges_total", "Id ranges the divergence sampler of this process compared"
)
SAMPLED_SECONDS: Final = Counter(
    "read_model_reconcile_seconds_total", "Seconds the divergence sampler of this process spent comparing id ranges"
)

_DIVERGENT: Final = Gauge(
    "read_model_divergent_rows",
    "Rows (entity and id) whose difference from the command side lasted the settle time, "
    "as the divergence sampler last found them",
)
_UNCONFIRMED: Final = Gauge(
    "read_model_divergence_unconfirmed_rows",
    "Differences the divergence sampler saw and has not confirmed yet (in flight, or not yet settled)",
)
_FULL_PASS_AGE: Final = Gauge(
    "read_model_reconcile_full_pass_age_seconds",
    "Seconds since the newest complete pass of the divergence sampler began: every id range has "
    "been compared since (before the first pass: since the sampler first ran)",
)
_ORPHANS: Final = Gauge("read_model_orphan_goods", "Live goods whose order the read model has not received")
_OLDEST_ORPHAN: Final = Gauge(
    "read_model_oldest_orphan_age_seconds", "Seconds since the oldest orphan goods item was created (0 without orphans)"
)


class TrustFigures(ScrapedGauges):
    """The divergence and orphan figures as last read from the read database; nothing until the first read."""

    gauges = (_DIVERGENT, _UNCONFIRMED, _FULL_PASS_AGE, _ORPHANS, _OLDEST_ORPHAN)

    def __init__(self) -> None:
        self._read: tuple[sampler.Figures, orphans.Figures, float] | None = None

    def update(self, divergence: sampler.Figures, waiting: orphans.Figures) -> None:
        self._read = (divergence, waiting, time.monotonic())

    def collect(self) -> Iterable[Metric]:
        read = self._read
        if read is None:
            return
        divergence, waiting, read_at = read
        since = time.monotonic() - read_at
        yield _DIVERGENT.of(divergence.divergent)
        yield _UNCONFIRMED.of(divergence.unconfirmed)
        if divergence.full_pass_age is not None:
            yield _FULL_PASS_AGE.of(divergence.full_pass_age + since)
        yield _ORPHANS.of(waiting.goods)
        yield _OLDEST_ORPHAN.of(0.0 if waiting.oldest_age is None else waiting.oldest_age + since)


TRUST: Final = TrustFigures()
REGISTRY.register(TRUST)


class TrustWatch:
    def __init__(self, settings: Settings, instance: str = "0") -> None:
        self.settings = settings
        self.instance = instance
        self.holding = False
        self._state: asyncpg.Connection[asyncpg.Record] | None = None
        self._reconciler: Reconciler | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work every interval until `stop` is set; never raises (but for cancellation)."""
        interval = self.settings.divergence_interval
        backoff = Backoff(min(1.0, interval), max(interval, 30.0), stop=stop)
        while not stop.is_set():
            try:
                await self.tick()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "read-model watch failed, retrying",
                    extra={"error": f"{type(exc).__name__}: {exc}", "holding": self.holding},
                    exc_info=not isinstance(exc, OSError | asyncpg.PostgresError),
                )
                await self.close()
                await backoff.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def tick(self) -> None:
        """One interval's work: lock, sampler step, figures. The figures are read even when the
        step fails (a command database down), so the orphans and the ages stay current."""
        state = await self._connection()
        try:
            await self._sample(state)
        finally:
            TRUST.update(await sampler.figures(state), await orphans.figures(state))

    async def _sample(self, state: asyncpg.Connection[asyncpg.Record]) -> None:
        if not self.holding:
            self.holding = bool(await state.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY))
            if self.holding:
                log.info("divergence sampler: this instance samples", extra={"instance": self.instance})
        if not self.holding:
            return
        if self.settings.divergence_ranges == 0:  # switched off: the state row still dates the sampler
            await state.execute(
                "INSERT INTO divergence_sampler (range_size) VALUES ($1) ON CONFLICT DO NOTHING",
                self.settings.divergence_range_size,
            )
            return
        reconciler = await self._compared()
        step = await sampler.Sampler(
            state, reconciler, self.settings.divergence_ranges, self.settings.divergence_settle
        ).step()
        SAMPLED_RANGES.inc(step.ranges)
        SAMPLED_SECONDS.inc(step.seconds)
        if step.passes_completed:
            log.info("divergence sampler: pass complete", extra={"instance": self.instance})

    async def _connection(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._state is None or self._state.is_closed():
            self.holding = False
            # A session silent for this long belongs to a hung or stopped process: PostgreSQL ends it,
            # which frees the lock for another instance. A working one speaks at least every interval.
            idle = max(60.0, 6 * self.settings.divergence_interval)
            self._state = await asyncpg.connect(
                self.settings.database_url,
                timeout=10,
                command_timeout=_COMMAND_TIMEOUT,
                server_settings={
                    "application_name": "order-history-sampler",
                    "timezone": "UTC",
                    "idle_session_timeout": str(int(idle * 1000)),
                },
            )
        return self._state

    async def _compared(self) -> Reconciler:
        if self._reconciler is None or any(c.is_closed() for c in self._reconciler.conns.values()):
            if self._reconciler is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._reconciler.__aexit__(), timeout=5)
            reconciler = Reconciler(
                self.settings, self.settings.divergence_range_size, read_database_url=self.settings.database_url
            )
            self._reconciler = await reconciler.__aenter__()
        return self._reconciler

    async def close(self) -> None:
        """Drop the connections (and so the lock); the next tick opens them again."""
        self.holding = False
        reconciler, self._reconciler = self._reconciler, None
        state, self._state = self._state, None
        if reconciler is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reconciler.__aexit__(), timeout=5)
        if state is not None and not state.is_closed():
            try:
                await asyncio.wait_for(state.close(), timeout=5)
            except Exception:
                state.terminate()
