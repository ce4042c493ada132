"""Every freshness_interval: the assigned partitions' log ends, and the partitions caught up with them.

The log ends feed the lag metric and freshness (docs/freshness.md): each
part's statement records, beside the positions, the newest occurred_at applied
per partition (apply.py); and every freshness_interval the consumer asks for
the log ends and records the partitions whose applied position has reached an
end it saw as caught up as of when it asked. The API reads both to tell every
answer how current it is.

Best effort: a round that cannot ask Kafka or write the marks leaves them to
the next round; it never holds up the lanes (the marks go through the
consumer's side connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Final

from aiokafka.errors import KafkaError

from order_history.consumer.clients import Clients
from order_history.consumer.progress import Progress
from order_history.projection.positions import Misfit, Positions
from shared.database import WAIT_OUT_ERRORS

# The runner's logger, whichever module logs: operators' queries and alerts select on its name.
log = logging.getLogger("order_history.consumer.runner")

_MARK_ERRORS: Final[tuple[type[Exception], ...]] = (*WAIT_OUT_ERRORS, TimeoutError)


class LogEndTracker:
    def __init__(
        self,
        clients: Clients,
        positions: Positions,
        progress: Progress,
        halted: list[Misfit],
        interval: float,
        stop: asyncio.Event,
    ) -> None:
        """`halted`: the assignment's misfits (not empty: halted, and nothing is marked)."""
        self.clients = clients
        self.positions = positions
        self.progress = progress
        self.halted = halted
        self.interval = interval
        self.stop = stop

    async def track(self) -> None:
        """Every freshness_interval: the log ends of the assigned partitions (for the lag metric, and
        for freshness), then the partitions caught up with them recorded as such (`mark_caught_up`).

        The fetches' high watermarks are fresher, but only for partitions being
        fetched: while the lanes are full the prefetcher fetches nothing for
        theirs, and lag must still grow.
        """
        c = self.clients
        assert c.consumer is not None
        interval = self.interval
        while not self.stop.is_set():
            started = time.monotonic()
            assigned = list(c.consumer.assignment())
            if assigned:
                # Taken before asking: the ends cover every event appended before this instant.
                asked_at = dt.datetime.now(dt.UTC)
                with contextlib.suppress(KafkaError, OSError):
                    ends = await c.consumer.end_offsets(assigned)
                    self.progress.saw_ends(ends, asked_at)
                await self.mark_caught_up()
            with contextlib.suppress(TimeoutError):
                # One look per interval, however long the look took (but never none between two).
                rest = max(interval - (time.monotonic() - started), interval / 10)
                await asyncio.wait_for(self.stop.wait(), timeout=rest)

    async def mark_caught_up(self) -> None:
        """Record each partition whose applied position has reached a log end it saw as caught up as of
        when it asked for that end.

        Under load a partition seldom holds all of the end it has just seen, but it
        reaches the ends seen a moment before: each is kept until reached, so a
        busy partition's mark trails its log by about its apply delay. Not while
        halted: a position past a recreated topic's end has not applied that log.
        """
        side = self.clients.side
        if self.halted or side is None:
            return
        reached = self.progress.reached()
        if not reached:
            return
        try:
            async with side.acquire(timeout=self.interval * 4) as conn:
                await self.positions.mark_caught_up(conn, reached)
        except _MARK_ERRORS as exc:
            # The next round marks them again, from the ends it sees then.
            log.debug("cannot record caught-up partitions", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self.progress.caught_up(reached)
