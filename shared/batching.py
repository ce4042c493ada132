"""Group commit for one command: concurrent calls share a statement and a commit.

Under load, most of a create's cost is per statement and per commit, not per
row: a round trip through asyncpg, PostgreSQL's parse/bind/execute, a WAL
flush. `Batcher.submit(item)` queues the item; up to `max_in_flight` batches
run at once, each one statement over every item queued so far (at most
`max_batch`). There is no timer: a call that finds a free slot runs at once, so
a lone request waits for nothing; calls that arrive while every slot is busy
go together in the next batch.

What a caller gets is unchanged: its row and its event commit atomically (the
batch is one statement, so one transaction), and its result is its own row.
If a batch fails because of its data (not because the database is
unreachable), each of its items is run again alone, so that one bad item gets
its own error and the others still commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg

from shared.database import UNAVAILABLE_ERRORS, Connection

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

RunBatch = Callable[[Connection, Sequence[In]], Awaitable[Sequence[Out]]]


class Batcher(Generic[In, Out]):
    def __init__(
        self, pool: asyncpg.Pool, run: RunBatch[In, Out], *, max_batch: int = 256, max_in_flight: int = 4
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._pool = pool
        self._run = run
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: deque[tuple[In, asyncio.Future[Out]]] = deque()
        self._in_flight = 0
        self._items_in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: In) -> Out:
        """Run the command for `item`, with whatever else is queued; return its own result."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_batches()
        return await future

    @property
    def pending(self) -> int:
        """Calls queued or in a running batch."""
        return len(self._queue) + self._items_in_flight

    def _start_batches(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            batch: list[tuple[In, asyncio.Future[Out]]] = []
            while self._queue and len(batch) < self._max_batch:
                entry = self._queue.popleft()
                if not entry[1].done():  # a caller that gave up (cancelled) is not written
                    batch.append(entry)
            if not batch:
                return
            self._in_flight += 1
            self._items_in_flight += len(batch)
            task = asyncio.create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        try:
            try:
                results = await self._execute([item for item, _ in batch])
            except UNAVAILABLE_ERRORS as exc:
                for _, future in batch:
                    _fail(future, exc)
                return
            except asyncpg.PostgresError as exc:
                if len(batch) == 1:
                    _fail(batch[0][1], exc)
                    return
                log.warning(
                    "a batch failed, running its items one by one",
                    extra={"items": len(batch), "error": f"{type(exc).__name__}: {exc}"},
                )
                await self._run_alone(batch)
                return
            except BaseException as exc:  # a bug, or cancelled at shutdown: nobody waits forever
                for _, future in batch:
                    _fail(future, exc)
                raise
            if len(results) != len(batch):
                error = RuntimeError(f"a batch of {len(batch)} items returned {len(results)} results")
                for _, future in batch:
                    _fail(future, error)
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._items_in_flight -= len(batch)
            self._start_batches()

    async def _run_alone(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        for item, future in batch:
            try:
                (result,) = await self._execute([item])
            except Exception as exc:
                _fail(future, exc)
            else:
                if not future.done():
                    future.set_result(result)

    async def _execute(self, items: Sequence[In]) -> Sequence[Out]:
        async with self._pool.acquire() as conn:
            return await self._run(conn, items)


def _fail(future: asyncio.Future[Out], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
