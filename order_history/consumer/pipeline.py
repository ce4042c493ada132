"""The prefetch task and the lanes: fetching ahead, applying in parallel, accounting for each part.

A prefetch task fetches, decodes and prepares the lanes' next parts
(fetching.py) while the lanes wait on the database, so Python's work and
PostgreSQL's overlap. Each lane applies its parts one at a time, in its own
transactions, through retry.py; a partition stays on one lane while any of its
messages wait there (lanes.py), so every partition is applied in offset order.
Each part applied is counted (metrics.py, `total`), moves its partitions'
progress (progress.py), wakes the API's waiting reads, and goes to Kafka's
committed offsets (commits.py).

`run` returns when the consumer stops or halts, or when a lane gives a part
up (a long outage): then the queued parts are dropped, and the runner resumes
from the stored positions, so nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError

from order_history.consumer import metrics
from order_history.consumer.assignment import Assignment
from order_history.consumer.clients import Clients
from order_history.consumer.commits import KafkaCommits
from order_history.consumer.fetching import Fetcher
from order_history.consumer.lanes import Lanes
from order_history.consumer.progress import Progress
from order_history.consumer.retry import apply_with_retry
from order_history.projection.apply import BatchStats, Part, Records, offset_ranges
from order_history.settings import Settings

# The runner's logger, whichever module logs: operators' queries and alerts select on its name.
log = logging.getLogger("order_history.consumer.runner")


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        clients: Clients,
        fetcher: Fetcher,
        assignment: Assignment,
        progress: Progress,
        commits: KafkaCommits,
        stop: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.fetcher = fetcher
        self.assignment = assignment
        self.progress = progress
        self.commits = commits
        self.stop = stop
        self.total = BatchStats()  # every part this consumer applied

    async def run(self) -> None:
        """Run the prefetcher and the lanes until the consumer stops or halts, or a lane gives a part up.

        When stopping, each lane finishes the part it is applying; queued parts are dropped.
        """
        ways = self.settings.apply_connections
        lanes = Lanes(ways)
        queues: list[asyncio.Queue[Part | None]] = [asyncio.Queue(1) for _ in range(ways)]
        room = asyncio.Event()  # set when a lane takes its queued part
        prefetch = asyncio.create_task(self._prefetch(lanes, queues, room))
        workers = [asyncio.create_task(self._lane(lanes, queue, room)) for queue in queues]
        try:
            done, _ = await asyncio.wait([prefetch, *workers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a task crashed: raise its error
            if prefetch in done:  # stopping or halted: let each lane finish its current part
                for queue in queues:
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(None)
                await asyncio.gather(*workers)
        finally:
            for task in (prefetch, *workers):
                task.cancel()
            await asyncio.gather(prefetch, *workers, return_exceptions=True)

    async def _prefetch(self, lanes: Lanes, queues: list[asyncio.Queue[Part | None]], room: asyncio.Event) -> None:
        """Fetch, decode and prepare the next part of every lane with room for one.

        The partitions waiting on a full lane are left out of the fetch (their
        records stay in aiokafka's buffer), so a full lane never holds up the
        others' next parts. Only this task fills the queues, so a lane open when
        the fetch starts is still open when its part is ready.
        """
        c = self.clients
        assert c.consumer is not None
        while not self.stop.is_set() and not self.assignment.halted:
            room.clear()
            open_lanes = [i for i, queue in enumerate(queues) if queue.empty()]
            full = set(range(len(queues))) - set(open_lanes)
            partitions = c.consumer.assignment() - lanes.bound_to(full) if full else ()
            if not open_lanes or (full and not partitions):
                await room.wait()
                continue
            # While a lane is full, wait only briefly for the others' partitions:
            # the full lane may take its part meanwhile, and its partitions' next
            # messages are not fetched until this returns.
            try:
                fetched = await self.fetcher.fetch(partitions, self.settings.fetch_while_full_ms if full else None)
            except OffsetOutOfRangeError as exc:
                await self.assignment.out_of_range(exc)
                return
            except NoOffsetForPartitionError:
                # Assigned, and not yet seeked by the rebalance listener (which reads the
                # database first): the listener gives it its position in a moment.
                await asyncio.sleep(self.settings.fetch_timeout_ms / 1000)
                continue
            if fetched is None:
                continue
            records, decoded = fetched
            for lane, tps in lanes.route({tp: len(m) for tp, m in records.items()}, open_lanes).items():
                queues[lane].put_nowait(Part.of({tp: records[tp] for tp in tps}, {tp: decoded[tp] for tp in tps}))
            # Not kept while the next fetch waits: once applied, a batch's records and events go.
            del fetched, records, decoded

    async def _lane(self, lanes: Lanes, queue: asyncio.Queue[Part | None], room: asyncio.Event) -> None:
        """Apply one lane's parts in order; return when told to stop, or when a part is given up."""
        while True:
            part = await queue.get()
            room.set()
            if part is None:
                return
            try:
                applied = await self._apply(part)
            finally:
                lanes.done(part.sizes())
            # Nor while the lane waits for its next part: an idle consumer would hold its last batch.
            del part
            if not applied:
                return

    async def _apply(self, part: Part) -> bool:
        """Apply a part (retry.py), account for it, commit it to Kafka; False if it was given up."""
        outcome = await apply_with_retry(self.clients, part, self.settings.consumer_max_backoff, self.stop)
        if outcome is None:
            return False
        stats, took = outcome
        self._account(stats, part.records, took)
        await self.commits.applied(part.records)
        return True

    def _account(self, stats: BatchStats, records: Records, took: float) -> None:
        if self.clients.applied is not None:
            self.clients.applied.poke()
        self.total.add(stats)
        metrics.record_part(stats, took)
        self.progress.applied(stats, records)
        log.debug(
            "batch applied",
            extra={
                "events": stats.events,
                "applied": stats.applied,
                "skipped": stats.skipped_seen,
                "dead_lettered": stats.dead_lettered,
                "parked": stats.parked,
                "ms": round(took * 1000, 1),
                **offset_ranges(records),
            },
        )
