"""Coalesced NOTIFY after commits: `Notifier`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

log = logging.getLogger(__name__)


class Notifier:
    """Tells listeners that something committed, outside the writing transactions.

    `poke()` after a commit; a background task sends one `NOTIFY <channel>` for
    all pokes since the last one, and at most one per `min_interval` seconds,
    so a burst of commits costs a few notifications (each one a round trip here
    and a wake-up of every listener), and no writing transaction holds
    PostgreSQL's notify lock through its commit. The command APIs wake the
    relay so (channel `outbox`); the consumer wakes the order-history APIs'
    waiting reads (channel `read_model_applied`).
    """

    def __init__(self, pool: asyncpg.Pool, channel: str, min_interval: float = 0.005) -> None:
        self._pool = pool
        self._channel = channel
        self._min_interval = min_interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop, then close the pool (for a notifier that owns its pool)."""
        await self.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._pool.execute(f"NOTIFY {self._channel}")
            except Exception as exc:  # listeners have a fallback (the relay polls, waiting reads check)
                log.debug("notify failed", extra={"channel": self._channel, "error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(self._min_interval)
