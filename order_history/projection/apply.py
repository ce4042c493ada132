"""Applying a part (one lane's share of a fetched batch) in one transaction, three ways.

- **fast**: the usual case (no poison message, nothing of the part applied
  before, no goods.created seen already) in one statement and one round trip:
  the batch statement with the tracked-positions CTEs (positions.TRACKED_CTES).
  If any of that does not hold it changes nothing and says so.
- **checked**: locks the part's positions, skips the messages below them,
  dead-letters or parks the rejected ones (dead_letters.py), applies the rest
  by upserts, advances the positions, all in one transaction.
- **isolating**: the database refused the part's data (REFUSED_DATA_ERRORS),
  or the consumer failed on it in a way it did not foresee: each message is
  applied alone (checked), and those that fail alone are dead-lettered with the
  reason, so one bad record neither stops nor hides the others.

`decide` is what a lane does after an error: isolate, retry, park the dead
letters Kafka would not take, or give the part up (the consumer then re-reads
from the stored positions); never skip.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from order_history.projection.dead_letters import DeadLetters, Rejected
from order_history.projection.positions import TRACKED_CTES, TRACKED_PARAMS, Positions, PositionsRetired
from order_history.projection.reduce import Source, reduce_events
from order_history.projection.snapshots import apply_resynced
from order_history.projection.statements import PreparedBatch, apply_prepared, apply_sql, prepare
from shared import logs
from shared.database import REFUSED_DATA_ERRORS, WAIT_OUT_ERRORS
from shared.events import Event
from shared.kafka import DeliveryTimeout

log = logging.getLogger(__name__)

# Per partition, for each of its messages in order, the decoded event or why it is rejected.
Decoded = dict[TopicPartition, list["Event | Rejected"]]
Records = dict[TopicPartition, list[ConsumerRecord]]

_FAST = apply_sql(
    before=TRACKED_CTES, guard="(SELECT ok FROM ok)", select="(SELECT ok FROM ok) AS ok", params=TRACKED_PARAMS
)


@dataclass
class Part:
    """Messages of some partitions, decoded, and their statement's parameters: one lane's transaction.

    `prepared` assumes every valid event of the part is new; the fast path uses
    it, the checked path prepares again when some of the part was applied before.
    `broken`: preparing the part failed in a way the consumer did not foresee;
    it is applied message by message (`Applier.isolating`), to find which.
    """

    records: Records
    decoded: Decoded
    prepared: PreparedBatch
    applies: Applied  # what applying every valid event of the part applies
    resynced: bool  # snapshots among them: the checked path applies the part
    broken: Exception | None = None

    @classmethod
    def of(cls, records: Records, decoded: Decoded) -> Part:
        by_partition: dict[TopicPartition, list[Event]] = {}
        events: list[Event] = []
        sources: list[Source] = []  # where each of `events` was read: the rows record it
        for tp, messages in records.items():
            valid = by_partition[tp] = []
            partition = tp.partition
            for message, outcome in zip(messages, decoded[tp], strict=True):
                if isinstance(outcome, Event):
                    valid.append(outcome)
                    sources.append((partition, message.offset))
            events += valid
        try:
            batch = reduce_events(events, sources)
            applies = Applied.of_partitions(by_partition)
            return cls(records, decoded, prepare(batch, insert_created=True), applies, batch.has_resynced)
        except Exception as exc:  # any record may hold anything: never a reason to stop
            return cls(records, decoded, prepare(reduce_events([])), Applied(), True, broken=exc)

    def __len__(self) -> int:
        return sum(map(len, self.records.values()))

    def sizes(self) -> dict[TopicPartition, int]:
        return {tp: len(m) for tp, m in self.records.items()}


@dataclass
class Applied:
    """The events a part applied: how many of each type, and the newest `occurred_at`, in all
    (for metrics) and per partition (`newest_in`: what the positions record, for the API's
    freshness; docs/freshness.md)."""

    by_type: Counter[str] = field(default_factory=Counter)
    newest: dt.datetime | None = None
    newest_in: dict[TopicPartition, dt.datetime] = field(default_factory=dict)

    @classmethod
    def of(cls, events: list[Event]) -> Applied:
        if not events:
            return cls()
        return cls(Counter(e.event_type for e in events), _newest(events, dt.datetime.now(dt.UTC)))

    @classmethod
    def of_partitions(cls, events: Mapping[TopicPartition, list[Event]]) -> Applied:
        now = dt.datetime.now(dt.UTC)
        newest_in = {tp: _newest(valid, now) for tp, valid in events.items() if valid}
        by_type = Counter(e.event_type for valid in events.values() for e in valid)
        return cls(by_type, max(newest_in.values(), default=None), newest_in)

    def add(self, other: Applied) -> None:
        self.by_type.update(other.by_type)
        if other.newest is not None and (self.newest is None or other.newest > self.newest):
            self.newest = other.newest
        for tp, newest in other.newest_in.items():
            if tp not in self.newest_in or newest > self.newest_in[tp]:
                self.newest_in[tp] = newest


def _newest(events: list[Event], now: dt.datetime) -> dt.datetime:
    """The newest occurred_at of `events`, but an event from the future counts as occurring `now`, when
    it is applied: else it would pin the read model's freshness at zero until its time came (up to the
    year 9999)."""
    return min(max(e.occurred_at for e in events), now)


@dataclass
class BatchStats:
    events: int = 0
    applied: int = 0
    skipped_seen: int = 0
    dead_lettered: int = 0
    parked: int = 0
    what: Applied = field(default_factory=Applied)

    def add(self, other: BatchStats) -> None:
        self.events += other.events
        self.applied += other.applied
        self.skipped_seen += other.skipped_seen
        self.dead_lettered += other.dead_lettered
        self.parked += other.parked
        self.what.add(other.what)


class Decision(enum.Enum):
    ISOLATE = "isolate"  # the data was refused, or failed the consumer: apply event by event
    RETRY = "retry"  # the database's or Kafka's state: wait, then try again
    PARK = "park"  # Kafka took no dead letter on the last tries: park them instead (and go on)
    GIVE_UP = "give_up"  # a long outage: drop the queued parts, re-read from the stored positions


def decide(error: BaseException, attempt: int, attempts_before_giving_up: int = 3) -> Decision:
    """What a lane does after `error` on the `attempt`-th try of a part.

    The database's and Kafka's states are waited out; anything else is about the
    part's records (refused data, or an error nobody foresaw): isolated, so that
    the record that causes it is dead-lettered and the others applied.
    """
    if isinstance(error, REFUSED_DATA_ERRORS):
        return Decision.ISOLATE
    if isinstance(error, DeliveryTimeout):
        return Decision.PARK if attempt >= attempts_before_giving_up else Decision.RETRY
    if isinstance(error, (*WAIT_OUT_ERRORS, KafkaError, PositionsRetired)):
        return Decision.GIVE_UP if attempt >= attempts_before_giving_up else Decision.RETRY
    return Decision.ISOLATE


class Applier:
    def __init__(self, pool: asyncpg.Pool, positions: Positions, dead_letters: DeadLetters) -> None:
        self.pool = pool
        self.positions = positions
        self.dead_letters = dead_letters

    async def apply(self, part: Part, park_undelivered: bool = False) -> BatchStats:
        """Fast if it can, checked otherwise; errors propagate (see `decide`)."""
        if part.broken is not None:
            raise part.broken
        stats = await self.fast(part)
        if stats is None:
            stats = await self.checked(
                part.records, part.decoded, None if part.resynced else part.prepared, park_undelivered=park_undelivered
            )
        return stats

    async def fast(self, part: Part) -> BatchStats | None:
        """The part in one round trip; None if it is not the usual case (nothing changed then).

        One statement instead of five (BEGIN, lock, apply, advance, COMMIT) also
        saves the event-loop turns the prefetcher takes between them.
        """
        if part.resynced or any(isinstance(o, Rejected) for outcomes in part.decoded.values() for o in outcomes):
            return None
        first = {tp: messages[0].offset for tp, messages in part.records.items()}
        end = {tp: messages[-1].offset + 1 for tp, messages in part.records.items()}
        async with self.pool.acquire() as conn:
            try:
                row = await conn.fetchrow(
                    _FAST, *part.prepared.params, *self.positions.tracked_args(first, end, part.applies.newest_in)
                )
            except asyncpg.UniqueViolationError:
                # A goods.created of the part was delivered before (projections: `inserted`):
                # the statement changed nothing; the checked path applies the part by upserts.
                return None
        assert row is not None
        if not row["ok"]:
            return None
        return BatchStats(events=len(part), applied=len(part), what=part.applies)

    async def checked(
        self,
        records: Records,
        decoded: Decoded,
        prepared: PreparedBatch | None = None,
        refused: Rejected | None = None,
        park_undelivered: bool = False,
    ) -> BatchStats:
        """Apply messages in one transaction, skipping those below the stored positions.

        `prepared`: the parameters for when every valid event is new and none is a
        snapshot (else prepared here). With `refused`, every new message is
        rejected so. `park_undelivered`: see DeadLetters.record.
        """
        stats = BatchStats()
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await self.positions.lock(conn, list(records))
            events: list[Event] = []
            sources: list[Source] = []
            by_partition: dict[TopicPartition, list[Event]] = {}
            poison: list[tuple[ConsumerRecord, Rejected]] = []
            next_offsets: dict[TopicPartition, int] = {}
            for tp, messages in records.items():
                floor = stored.get(tp, 0)
                new = by_partition.setdefault(tp, [])
                for message, outcome in zip(messages, decoded[tp], strict=True):
                    stats.events += 1
                    if message.offset < floor:
                        stats.skipped_seen += 1
                    elif refused is not None:
                        poison.append((message, refused))
                    elif isinstance(outcome, Rejected):
                        poison.append((message, outcome))
                    else:
                        new.append(outcome)
                        sources.append((tp.partition, message.offset))
                events.extend(new)
                if messages:
                    next_offsets[tp] = max(floor, messages[-1].offset + 1)
            if poison:
                recorded = await self.dead_letters.record(conn, poison, park_undelivered)
                stats.dead_lettered, stats.parked = recorded.dead_lettered, recorded.parked
            batch = None
            if prepared is None or stats.skipped_seen or refused is not None:
                batch = reduce_events(events, sources)  # some were applied before: not the prefetched set
                prepared = prepare(batch)
            if len(prepared):
                # Upserts only: a goods.created may be here again (see projections: `inserted`).
                await apply_prepared(conn, prepared.upserts_only())
            if batch is not None and batch.has_resynced:
                await apply_resynced(conn, batch)
            stats.applied = len(events)
            stats.what = Applied.of_partitions(by_partition)
            await self.positions.advance(conn, next_offsets, stats.what.newest_in)
        return stats

    async def isolating(
        self, records: Records, decoded: Decoded, error: Exception, park_undelivered: bool = False
    ) -> BatchStats:
        """The database refused a valid-looking part, or the consumer failed on it: apply its
        messages one by one and dead-letter those that fail alone.

        The database's and Kafka's states (WAIT_OUT_ERRORS, KafkaError) still propagate:
        they say nothing about the message.
        """
        log.warning(
            "batch failed, applying it event by event",
            extra={"error": f"{type(error).__name__}: {error}", **offset_ranges(records)},
        )
        total = BatchStats()
        for tp, messages in records.items():
            for message, outcome in zip(messages, decoded[tp], strict=True):
                single, one = {tp: [message]}, {tp: [outcome]}
                try:
                    stats = await self.checked(single, one, park_undelivered=park_undelivered)
                except REFUSED_DATA_ERRORS as exc:
                    refused = Rejected(f"database refused the event: {type(exc).__name__}: {exc}")
                    stats = await self.checked(single, one, refused=refused, park_undelivered=park_undelivered)
                except (*WAIT_OUT_ERRORS, KafkaError, PositionsRetired):
                    raise
                except Exception as exc:
                    failed = Rejected(f"the consumer failed on it: {type(exc).__name__}: {exc}"[:2000])
                    log.exception("unforeseen error on one record: rejecting it", extra=offset_ranges(single))
                    stats = await self.checked(single, one, refused=failed, park_undelivered=park_undelivered)
                total.add(stats)
        return total


def offset_ranges(records: Records) -> dict[str, object]:
    """Log fields naming what a batch holds: its topics, partitions and offset ranges."""
    return logs.offset_ranges((tp.topic, tp.partition, m[0].offset, m[-1].offset) for tp, m in records.items() if m)
