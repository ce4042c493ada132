"""Applying a part (one lane's share of a fetched batch) in one transaction, three ways.

- **fast**: the usual case (no poison message, nothing of the part applied
  before, no goods.created seen already) in one statement and one round trip:
  the batch statement with the tracked-positions CTEs (positions.TRACKED_CTES).
  If any of that does not hold it changes nothing and says so.
- **checked**: locks the part's positions, skips the messages below them,
  dead-letters the poison ones, applies the rest by upserts, advances the
  positions, all in one transaction.
- **isolating**: the database refused the part's data (REFUSED_DATA_ERRORS):
  each message is applied alone (checked), and those the database refuses are
  dead-lettered with its words, so one bad event neither stops nor hides the
  others.

`decide` is what a lane does after an error: isolate, retry, or give the part
up (the consumer then re-reads from the stored positions); never skip.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition

from order_history.dead_letters import DeadLetters
from order_history.positions import TRACKED_CTES, TRACKED_PARAMS, Positions
from order_history.projections import (
    PreparedBatch,
    apply_prepared,
    apply_resynced,
    apply_sql,
    prepare,
    reduce_events,
)
from shared import logs
from shared.database import REFUSED_DATA_ERRORS
from shared.events import Event

log = logging.getLogger(__name__)

# Per partition, for each of its messages in order, the decoded event or the reason it is poison.
Decoded = dict[TopicPartition, list["Event | str"]]
Records = dict[TopicPartition, list[ConsumerRecord]]

_FAST = apply_sql(
    before=TRACKED_CTES, guard="(SELECT ok FROM ok)", select="(SELECT ok FROM ok) AS ok", params=TRACKED_PARAMS
)


@dataclass
class Part:
    """Messages of some partitions, decoded, and their statement's parameters: one lane's transaction.

    `prepared` assumes every valid event of the part is new; the fast path uses
    it, the checked path prepares again when some of the part was applied before.
    """

    records: Records
    decoded: Decoded
    prepared: PreparedBatch
    applies: Applied  # what applying every valid event of the part applies
    resynced: bool  # snapshots among them: the checked path applies the part

    @classmethod
    def of(cls, records: Records, decoded: Decoded) -> Part:
        events = [o for tp in records for o in decoded[tp] if not isinstance(o, str)]
        batch = reduce_events(events)
        return cls(records, decoded, prepare(batch, insert_created=True), Applied.of(events), batch.has_resynced)

    def __len__(self) -> int:
        return sum(map(len, self.records.values()))

    def sizes(self) -> dict[TopicPartition, int]:
        return {tp: len(m) for tp, m in self.records.items()}


@dataclass
class Applied:
    """The events a part applied: how many of each type, and the newest `occurred_at` (for metrics)."""

    by_type: Counter[str] = field(default_factory=Counter)
    newest: dt.datetime | None = None

    @classmethod
    def of(cls, events: list[Event]) -> Applied:
        if not events:
            return cls()
        return cls(Counter(e.event_type for e in events), max(e.occurred_at for e in events))

    def add(self, other: Applied) -> None:
        self.by_type.update(other.by_type)
        if other.newest is not None and (self.newest is None or other.newest > self.newest):
            self.newest = other.newest


@dataclass
class BatchStats:
    events: int = 0
    applied: int = 0
    skipped_seen: int = 0
    poison: int = 0
    what: Applied = field(default_factory=Applied)

    def add(self, other: BatchStats) -> None:
        self.events += other.events
        self.applied += other.applied
        self.skipped_seen += other.skipped_seen
        self.poison += other.poison
        self.what.add(other.what)


class Decision(enum.Enum):
    ISOLATE = "isolate"  # the database refused the data: apply event by event
    RETRY = "retry"  # the database's or Kafka's state: wait, then try again
    GIVE_UP = "give_up"  # a long outage: drop the queued parts, re-read from the stored positions


def decide(error: BaseException, attempt: int, attempts_before_giving_up: int = 3) -> Decision:
    """What a lane does after `error` on the `attempt`-th try of a part (errors it does not know: raised)."""
    if isinstance(error, REFUSED_DATA_ERRORS):
        return Decision.ISOLATE
    if attempt >= attempts_before_giving_up:
        return Decision.GIVE_UP
    return Decision.RETRY


class Applier:
    def __init__(self, pool: asyncpg.Pool, positions: Positions, dead_letters: DeadLetters) -> None:
        self.pool = pool
        self.positions = positions
        self.dead_letters = dead_letters

    async def apply(self, part: Part) -> BatchStats:
        """Fast if it can, checked otherwise; REFUSED_DATA_ERRORS propagate (see `isolating`)."""
        stats = await self.fast(part)
        if stats is None:
            stats = await self.checked(part.records, part.decoded, None if part.resynced else part.prepared)
        return stats

    async def fast(self, part: Part) -> BatchStats | None:
        """The part in one round trip; None if it is not the usual case (nothing changed then).

        One statement instead of five (BEGIN, lock, apply, advance, COMMIT) also
        saves the event-loop turns the prefetcher takes between them.
        """
        if part.resynced or any(isinstance(o, str) for outcomes in part.decoded.values() for o in outcomes):
            return None
        first = {tp: messages[0].offset for tp, messages in part.records.items()}
        end = {tp: messages[-1].offset + 1 for tp, messages in part.records.items()}
        async with self.pool.acquire() as conn:
            try:
                row = await conn.fetchrow(_FAST, *part.prepared.params, *self.positions.tracked_args(first, end))
            except asyncpg.UniqueViolationError:
                # A goods.created of the part was delivered before (projections: `inserted`):
                # the statement changed nothing; the checked path applies the part by upserts.
                return None
        assert row is not None
        if not row["ok"]:
            return None
        return BatchStats(events=len(part), applied=len(part), what=part.applies)

    async def checked(
        self, records: Records, decoded: Decoded, prepared: PreparedBatch | None = None, refused: str | None = None
    ) -> BatchStats:
        """Apply messages in one transaction, skipping those below the stored positions.

        `prepared`: the parameters for when every valid event is new and none is a
        snapshot (else prepared here). With `refused`, every new message is
        dead-lettered with that reason.
        """
        stats = BatchStats()
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await self.positions.lock(conn, list(records))
            events: list[Event] = []
            poison: list[tuple[ConsumerRecord, str]] = []
            next_offsets: dict[TopicPartition, int] = {}
            for tp, messages in records.items():
                floor = stored.get(tp, 0)
                for message, outcome in zip(messages, decoded[tp], strict=True):
                    stats.events += 1
                    if message.offset < floor:
                        stats.skipped_seen += 1
                    elif refused is not None:
                        poison.append((message, refused))
                    elif isinstance(outcome, str):
                        poison.append((message, outcome))
                    else:
                        events.append(outcome)
                if messages:
                    next_offsets[tp] = max(floor, messages[-1].offset + 1)
            if poison:
                await self.dead_letters.record(conn, poison)
                stats.poison = len(poison)
            batch = None
            if prepared is None or stats.skipped_seen or refused is not None:
                batch = reduce_events(events)  # some were applied before: not the prefetched set
                prepared = prepare(batch)
            if len(prepared):
                # Upserts only: a goods.created may be here again (see projections: `inserted`).
                await apply_prepared(conn, prepared.upserts_only())
            if batch is not None and batch.has_resynced:
                await apply_resynced(conn, batch)
            stats.applied = len(events)
            stats.what = Applied.of(events)
            await self.positions.advance(conn, next_offsets)
        return stats

    async def isolating(self, records: Records, decoded: Decoded, error: Exception) -> BatchStats:
        """The database refused a valid-looking part: apply its messages one by one and
        dead-letter those it refuses."""
        log.warning(
            "database refused a batch, applying it event by event",
            extra={"error": f"{type(error).__name__}: {error}", **offset_ranges(records)},
        )
        total = BatchStats()
        for tp, messages in records.items():
            for message, outcome in zip(messages, decoded[tp], strict=True):
                single, one = {tp: [message]}, {tp: [outcome]}
                try:
                    stats = await self.checked(single, one)
                except REFUSED_DATA_ERRORS as exc:
                    reason = f"database refused the event: {type(exc).__name__}: {exc}"
                    stats = await self.checked(single, one, refused=reason)
                total.add(stats)
        return total


def offset_ranges(records: Records) -> dict[str, object]:
    """Log fields naming what a batch holds: its topics, partitions and offset ranges."""
    return logs.offset_ranges((tp.topic, tp.partition, m[0].offset, m[-1].offset) for tp, m in records.items() if m)
