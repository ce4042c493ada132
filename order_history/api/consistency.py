"""Read your own writes: a GET that carries Consistency-Token waits until the read model reflects them.

A token is reflected once the read model's row of its entity has at least its
version (shared/consistency.py says why that holds across deletes, moves and
rebuilds). A request first checks its tokens once; if some are not reflected
yet, it waits on `ReadModelWatch`, one per API process: the consumer sends
`NOTIFY read_model_applied` after its commits, the watch LISTENs, and on each
notification checks the tokens of every waiting request in one query, waking
those that are reflected. It also checks every FALLBACK_INTERVAL while any
request waits, so a lost notification (its connection was down) delays a
request, never strands it. No request polls the database on its own.

On a streaming replica (ORDER_HISTORY_QUERY_DATABASE_URL names a hot
standby) there is nothing to LISTEN to: a standby cannot LISTEN, and the
primary's notification would come before the replica has replayed the change
anyway. What counts there is the replica's own state, so the watch checks it
every STANDBY_INTERVAL while any request waits, still in one query for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from shared.consistency import Token
from shared.database import UNAVAILABLE_ERRORS, Connection

log = logging.getLogger(__name__)

CHANNEL: Final = "read_model_applied"
_LISTEN_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)
FALLBACK_INTERVAL: Final = 0.25
STANDBY_INTERVAL: Final = 0.02

# The tokens the read model does not reflect yet.
_PENDING = """SELECT t.entity, t.id, t.version
FROM unnest($1::text[], $2::bigint[], $3::integer[]) AS t(entity, id, version)
WHERE NOT CASE t.entity
    WHEN 'order' THEN EXISTS (SELECT 1 FROM orders o WHERE o.id = t.id AND o.version >= t.version)
    ELSE EXISTS (SELECT 1 FROM goods g WHERE g.id = t.id AND g.version >= t.version)
END"""


async def pending(conn: Connection, tokens: Sequence[Token]) -> list[Token]:
    """Those of `tokens` the read model does not reflect yet."""
    if not tokens:
        return []
    rows = await conn.fetch(_PENDING, [t.entity for t in tokens], [t.id for t in tokens], [t.version for t in tokens])
    return [Token(r["entity"], r["id"], r["version"]) for r in rows]


@dataclass(eq=False)
class _Waiter:
    tokens: list[Token]
    reflected: asyncio.Event = field(default_factory=asyncio.Event)


class ReadModelWatch:
    """Waits for tokens on behalf of the requests of one API process (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, listen_dsn: str) -> None:
        self.pool = pool
        self.listen_dsn = listen_dsn
        self.waiters: set[_Waiter] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self.on_standby = False  # the query database is a replica in recovery: no LISTEN, shorter checks

    async def wait(self, tokens: Sequence[Token], timeout: float) -> list[Token]:
        """Wait up to `timeout` seconds until the read model reflects `tokens`; what is still pending."""
        async with self.pool.acquire() as conn:
            left = await pending(conn, tokens)
        if not left or timeout <= 0:
            return left
        self._ensure_running()
        waiter = _Waiter(left)
        self.waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.reflected.wait(), timeout)
        finally:
            self.waiters.discard(waiter)
        if waiter.reflected.is_set():
            return []
        async with self.pool.acquire() as conn:
            return await pending(conn, waiter.tokens)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def _notified(self, *_: Any) -> None:
        self._changed.set()

    async def _listen(self) -> None:
        if self.on_standby or (self._listener is not None and not self._listener.is_closed()):
            return
        listener: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            listener = await asyncpg.connect(self.listen_dsn, timeout=5)
            if await listener.fetchval("SELECT pg_is_in_recovery()"):
                self.on_standby = True
                log.info("the query database is a standby: waiting requests check its replay")
                await listener.close()
                return
            await listener.add_listener(CHANNEL, self._notified)
            self._listener = listener
        except _LISTEN_ERRORS as exc:
            if listener is not None:
                listener.terminate()
            log.warning("cannot listen for applied events", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _run(self) -> None:
        """While requests wait: on each notification (or every FALLBACK_INTERVAL), one check for all."""
        while self.waiters:
            await self._listen()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), STANDBY_INTERVAL if self.on_standby else FALLBACK_INTERVAL)
            self._changed.clear()
            waiting = list(self.waiters)
            tokens = sorted({t for w in waiting for t in w.tokens})
            try:
                async with self.pool.acquire() as conn:
                    still = set(await pending(conn, tokens))
            except UNAVAILABLE_ERRORS as exc:
                log.warning("cannot check consistency tokens", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            for waiter in waiting:
                waiter.tokens = [t for t in waiter.tokens if t in still]
                if not waiter.tokens:
                    waiter.reflected.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
