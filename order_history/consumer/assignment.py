"""Where each assigned partition resumes: at the read model's positions, or nowhere (halted).

On every assignment the consumer seeks to the positions stored in the read
database (projection/positions.py), in the same transactions as the changes
their events made; after a crash, a kill -9 or a rebalance it resumes from
what its own database says it applied. A partition never applied gets its
position row at assignment and starts at the log's start.

Positions that do not fit the log (positions.misfits), found on assignment or
as an OffsetOutOfRange from the broker, halt the consumer: it pauses every
partition, applies nothing more, logs why every minute, and stays up (for its
metrics and `status`) until an operator rebuilds the read model or resets the
positions and restarts it. A database or Kafka outage while reading the
positions is waited out; nothing is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from order_history.consumer import metrics
from order_history.consumer.clients import Clients
from order_history.consumer.progress import Progress
from order_history.projection.positions import Misfit, Positions, misfits
from shared.backoff import Backoff
from shared.database import WAIT_OUT_ERRORS

# The runner's logger, whichever module logs: operators' queries and alerts select on its name.
log = logging.getLogger("order_history.consumer.runner")

_HALTED_REMINDER: Final = 60.0


class Assignment:
    def __init__(
        self, clients: Clients, positions: Positions, progress: Progress, max_backoff: float, stop: asyncio.Event
    ) -> None:
        self.clients = clients
        self.positions = positions
        self.progress = progress
        self.max_backoff = max_backoff
        self.stop = stop
        self.halted: list[Misfit] = []  # not empty: halted, on these
        self.rebalances = 0

    async def seek_to_stored_positions(self, tps: list[TopicPartition]) -> None:
        """Seek to the positions of the read database, after checking that they fit the logs."""
        c = self.clients
        assert c.pool is not None and c.consumer is not None
        if not tps:
            return
        if self.halted:
            c.consumer.pause(*tps)
            return
        backoff = Backoff(0.1, self.max_backoff, stop=self.stop)
        while True:
            try:
                async with c.pool.acquire(timeout=10) as conn:
                    stored = await self.positions.load(conn, tps)
                log_start = await c.consumer.beginning_offsets(tps)
                log_end = await c.consumer.end_offsets(tps)
                found = misfits(stored, log_start, log_end)
                first = {tp: log_start[tp] for tp in tps if tp not in stored}
                if first and not found:
                    # A partition's position row from its assignment on, not from its first
                    # applied record: `status` then sees a partition whose very first record
                    # holds it as it sees any other (the row's updated_at stays put).
                    async with c.pool.acquire(timeout=10) as conn:
                        await self.positions.create(conn, first)
                break
            except (*WAIT_OUT_ERRORS, KafkaError) as exc:
                log.warning("cannot read positions, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                if self.stop.is_set():
                    return
                await backoff.wait()
        if found:
            self.halt(found)
            return
        for tp in tps:
            if tp in stored:
                c.consumer.seek(tp, stored[tp])
            self.progress.sought(tp, stored.get(tp, log_start[tp]))
        never_applied = [tp for tp in tps if tp not in stored]
        if never_applied:  # one request for all: each call waits for the fetcher's offset reset
            await c.consumer.seek_to_beginning(*never_applied)
        log.info(
            "seeked to stored positions",
            extra={"positions": {f"{tp.topic}[{tp.partition}]": stored.get(tp, 0) for tp in tps}},
        )

    def revoked(self, tps: Sequence[TopicPartition]) -> None:
        """A rebalance took these partitions: their progress is their next owner's to track."""
        self.rebalances += 1
        metrics.REBALANCES.inc()
        for tp in tps:
            self.progress.revoked(tp)

    def halt(self, found: list[Misfit]) -> None:
        """Apply nothing more: the stored positions do not fit the log (see the module docstring)."""
        c = self.clients
        assert c.consumer is not None
        known = {m.tp for m in self.halted}
        self.halted.extend(m for m in found if m.tp not in known)
        c.consumer.pause(*c.consumer.assignment())
        for misfit in found:
            log.error(
                "consumer stopped: stored position does not fit the log; rebuild the read model "
                "or reset the positions (see the README), then restart",
                extra={
                    "topic": misfit.tp.topic,
                    "partition": misfit.tp.partition,
                    "offset": misfit.stored,
                    "log_start": misfit.log_start,
                    "log_end": misfit.log_end,
                    "reason": misfit.reason,
                },
            )

    async def out_of_range(self, error: OffsetOutOfRangeError) -> None:
        """The broker refused a fetch offset: a misfit found while running."""
        c = self.clients
        assert c.consumer is not None
        offsets: dict[TopicPartition, int] = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
        tps = list(offsets) or list(c.consumer.assignment())
        log_start = await c.consumer.beginning_offsets(tps)
        log_end = await c.consumer.end_offsets(tps)
        found = misfits(offsets, log_start, log_end) or [
            Misfit(tp, offsets.get(tp), log_start[tp], log_end[tp]) for tp in tps
        ]
        self.halt(found)

    async def wait_halted(self) -> None:
        """While halted: wait until stopped, saying why every minute."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=_HALTED_REMINDER)
        if not self.stop.is_set():
            log.error(
                "consumer still stopped: stored positions do not fit the log",
                extra={"partitions": [m.reason for m in self.halted]},
            )


class SeekFromDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in revoked]})
        self.assignment.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in assigned]})
        await self.assignment.seek_to_stored_positions(list(assigned))
