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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import asyncpg

from order_history.consumer import metrics
from order_history.ops import orphans, sampler
from order_history.ops.reconcile import Reconciler
from order_history.settings import Settings
from shared.backoff import Backoff

log = logging.getLogger(__name__)

LOCK_KEY: Final = 0x73616D706C6572  # "sampler": one sampling instance per read database
_COMMAND_TIMEOUT: Final = 60.0


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
            metrics.TRUST.update(await sampler.figures(state), await orphans.figures(state))

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
        metrics.SAMPLED_RANGES.inc(step.ranges)
        metrics.SAMPLED_SECONDS.inc(step.seconds)
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
