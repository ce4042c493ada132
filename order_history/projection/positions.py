"""Tracking records: the next offset to apply per topic-partition, kept in the read database.

`consumer_positions` holds, per consumer group and topic-partition, the offset
of the next message to apply. It advances in the same transaction as the
changes its messages made, so the read model is always exactly "the log up to
these positions". On every assignment the consumer seeks to them (Kafka's own
committed offsets are written afterwards, for lag tools only).

Beside each position, what the API tells of the read model's freshness
(docs/freshness.md): `newest_occurred_at`, advanced by the same statement as
the position, and `caught_up_at`, written by the consumer while it is caught
up (`mark_caught_up`).

Positions must fit the log: a stored position past the log's end (the topic
was recreated or truncated) or before its start (retention deleted messages
that were never applied) would make the consumer skip or silently miss
events. `misfits` finds them; the consumer then stops applying and says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiokafka import TopicPartition

from shared.database import Connection

# The CTEs that make the batch statement a tracked one (see apply.py): lock the
# part's position rows in a fixed order; `ok` when every row exists and none is
# past the part's first offset (nothing of the part applied yet); then advance
# them, and their newest occurred_at with them (NULL: no event of that partition
# in the part; GREATEST ignores it). Parameters: {group}, {topics}, {partitions},
# {first_offsets}, {end_offsets}, {newest}.
TRACKED_CTES = """pos AS (
    SELECT c.topic, c.partition, c.next_offset, x.first_offset, x.end_offset, x.newest
    FROM consumer_positions AS c
    JOIN unnest({topics}::text[], {partitions}::integer[], {first_offsets}::bigint[], {end_offsets}::bigint[],
                {newest}::timestamptz[])
        AS x(t, p, first_offset, end_offset, newest) ON c.topic = x.t AND c.partition = x.p
    WHERE c.consumer_group = {group}
    ORDER BY c.topic, c.partition
    FOR UPDATE OF c
), ok AS (
    SELECT count(*) = cardinality({topics}::text[]) AND COALESCE(bool_and(next_offset <= first_offset), false)
        AS ok
    FROM pos
), advanced AS (
    UPDATE consumer_positions AS c SET next_offset = pos.end_offset, updated_at = now(),
        newest_occurred_at = GREATEST(c.newest_occurred_at, pos.newest)
    FROM pos
    WHERE (SELECT ok FROM ok) AND c.consumer_group = {group} AND c.topic = pos.topic
      AND c.partition = pos.partition
    RETURNING 1
)"""
TRACKED_PARAMS = ("group", "topics", "partitions", "first_offsets", "end_offsets", "newest")

_LOAD = """SELECT topic, partition, next_offset FROM consumer_positions
           WHERE consumer_group = $1 AND topic = ANY($2::text[])"""
_CREATE_MISSING = """INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset)
                     SELECT $1, t, p, 0 FROM unnest($2::text[], $3::integer[]) AS x(t, p)
                     ON CONFLICT DO NOTHING"""
_CREATE_AT = """INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset)
                SELECT $1, t, p, o FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS x(t, p, o)
                ON CONFLICT DO NOTHING"""
_SELECT_FOR_UPDATE = """SELECT c.topic, c.partition, c.next_offset FROM consumer_positions c
                        JOIN unnest($2::text[], $3::integer[]) AS x(t, p) ON c.topic = x.t AND c.partition = x.p
                        WHERE c.consumer_group = $1
                        ORDER BY c.topic, c.partition FOR UPDATE OF c"""
_ADVANCE = """UPDATE consumer_positions c SET next_offset = x.o, updated_at = now(),
                  newest_occurred_at = GREATEST(c.newest_occurred_at, x.n)
              FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::timestamptz[]) AS x(t, p, o, n)
              WHERE c.consumer_group = $1 AND c.topic = x.t AND c.partition = x.p AND c.next_offset < x.o"""
# An operator's reset says nothing of how current the read model is at the new
# positions (a recreated topic's log is another log): freshness is unknown until
# the consumer applies or catches up again.
_SET = """INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset)
          SELECT $1, t, p, o FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS x(t, p, o)
          ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset,
              updated_at = now(), newest_occurred_at = NULL, caught_up_at = NULL"""
# Caught up as of `at`: the row's position had reached the log end seen then. Checked
# against the stored position (not the consumer's memory of it), never moved back,
# and rows a lane holds are skipped (SKIP LOCKED): the lanes never wait for this, and
# the next round marks them.
_CAUGHT_UP = """WITH seen AS (
    SELECT c.topic, c.partition, x.at
    FROM consumer_positions AS c
    JOIN unnest($2::text[], $3::integer[], $4::bigint[], $5::timestamptz[]) AS x(t, p, log_end, at)
        ON c.topic = x.t AND c.partition = x.p
    WHERE c.consumer_group = $1 AND c.next_offset >= x.log_end
      AND (c.caught_up_at IS NULL OR c.caught_up_at < x.at)
    ORDER BY c.topic, c.partition
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE consumer_positions AS c SET caught_up_at = seen.at
FROM seen WHERE c.consumer_group = $1 AND c.topic = seen.topic AND c.partition = seen.partition"""
_FRESHNESS = """SELECT topic, partition, newest_occurred_at, caught_up_at FROM consumer_positions
                WHERE consumer_group = $1"""


# What `rebuild` sets the old read model's positions to when it switches the
# API over: past every log end, so that a consumer's transaction still aimed at
# the old tables applies nothing there (its fast path's `ok` is false) and the
# checked path raises PositionsRetired; the consumer then re-reads its
# positions, which now name the new tables.
RETIRED: Final = 2**62


class PositionsRetired(Exception):
    """The read model these positions belong to was replaced by a rebuild."""


class Positions:
    """consumer_positions: the tracking records of one consumer group."""

    def __init__(self, group: str) -> None:
        self.group = group

    async def load(self, conn: Connection, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        rows = await conn.fetch(_LOAD, self.group, sorted({tp.topic for tp in tps}))
        wanted = set(tps)
        found = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        return {tp: off for tp, off in found.items() if tp in wanted}

    async def load_all(self, conn: Connection) -> dict[TopicPartition, int]:
        rows = await conn.fetch(
            "SELECT topic, partition, next_offset FROM consumer_positions WHERE consumer_group = $1", self.group
        )
        return {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}

    async def lock(self, conn: Connection, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Lock the position rows of `tps` (in a fixed order) and return them; creates missing rows at 0.

        Raises PositionsRetired if a rebuild replaced the read model they belong to."""
        ordered = sorted(tps)
        topics = [tp.topic for tp in ordered]
        parts = [tp.partition for tp in ordered]
        rows = await conn.fetch(_SELECT_FOR_UPDATE, self.group, topics, parts)
        if len(rows) < len(ordered):  # a partition's first batch: one more round trip, once
            await conn.execute(_CREATE_MISSING, self.group, topics, parts)
            rows = await conn.fetch(_SELECT_FOR_UPDATE, self.group, topics, parts)
        stored = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        if any(offset >= RETIRED for offset in stored.values()):
            raise PositionsRetired(f"positions of group {self.group!r} were retired by a rebuild")
        return stored

    async def create(self, conn: Connection, offsets: Mapping[TopicPartition, int]) -> None:
        """Create the rows of partitions that have none, at `offsets` (a row already there stays)."""
        await conn.execute(_CREATE_AT, self.group, *_columns(offsets))

    async def advance(
        self,
        conn: Connection,
        next_offsets: Mapping[TopicPartition, int],
        newest: Mapping[TopicPartition, dt.datetime] | None = None,
    ) -> None:
        """Move positions forward (never back), and with them the newest occurred_at applied (`newest`)."""
        topics, partitions, offsets = _columns(next_offsets)
        found = newest or {}
        times = [found.get(TopicPartition(t, p)) for t, p in zip(topics, partitions, strict=True)]
        await conn.execute(_ADVANCE, self.group, topics, partitions, offsets, times)

    async def mark_caught_up(self, conn: Connection, seen: Mapping[TopicPartition, tuple[int, dt.datetime]]) -> int:
        """Per partition, (a log end, when it was seen): where the stored position has reached that end,
        record the partition as caught up as of then. Returns how many rows were marked."""
        ordered = sorted(seen)
        status = await conn.execute(
            _CAUGHT_UP,
            self.group,
            [tp.topic for tp in ordered],
            [tp.partition for tp in ordered],
            [seen[tp][0] for tp in ordered],
            [seen[tp][1] for tp in ordered],
        )
        return int(status.rsplit(" ", 1)[-1]) if status.startswith("UPDATE") else 0

    async def freshness(self, conn: Connection) -> list[PartitionFreshness]:
        """What the group's rows say of each partition's freshness."""
        rows = await conn.fetch(_FRESHNESS, self.group)
        return [
            PartitionFreshness(r["topic"], r["partition"], r["newest_occurred_at"], r["caught_up_at"]) for r in rows
        ]

    async def set(self, conn: Connection, offsets: Mapping[TopicPartition, int]) -> None:
        """Set positions outright (an operator's reset, with the consumers stopped)."""
        await conn.execute(_SET, self.group, *_columns(offsets))

    def tracked_args(
        self,
        first: Mapping[TopicPartition, int],
        end: Mapping[TopicPartition, int],
        newest: Mapping[TopicPartition, dt.datetime] | None = None,
    ) -> list[object]:
        """TRACKED_PARAMS' values for a part whose messages run from `first` to before `end`, whose
        newest occurred_at per partition is `newest` (a partition without any event: none)."""
        ordered = sorted(first)
        found = newest or {}
        return [
            self.group,
            [tp.topic for tp in ordered],
            [tp.partition for tp in ordered],
            [first[tp] for tp in ordered],
            [end[tp] for tp in ordered],
            [found.get(tp) for tp in ordered],
        ]


@dataclass(frozen=True)
class PartitionFreshness:
    """How current the read model is in one partition (docs/freshness.md).

    `newest`: the newest occurred_at applied from it. `caught_up`: the latest time the
    consumer saw its log end at or below the applied position. Each is an instant
    before which every event appended to the partition is applied: an event is
    appended after it occurred and a partition is applied in order, so everything
    appended before the newest applied event occurred is applied too.
    """

    topic: str
    partition: int
    newest: dt.datetime | None
    caught_up: dt.datetime | None

    @property
    def as_of(self) -> dt.datetime | None:
        """The later of the two: every event appended before it is applied (None: unknown)."""
        known = [t for t in (self.newest, self.caught_up) if t is not None]
        return max(known) if known else None


@dataclass(frozen=True)
class Misfit:
    """A stored position that does not fit its partition's log."""

    tp: TopicPartition
    stored: int | None  # None: never applied anything of it
    log_start: int
    log_end: int

    @property
    def kind(self) -> str:
        return "past_log_end" if self.stored is not None and self.stored > self.log_end else "before_log_start"

    @property
    def reason(self) -> str:
        where = f"{self.tp.topic}[{self.tp.partition}]"
        if self.kind == "past_log_end":
            return (
                f"{where}: the stored position {self.stored} is past the log's end {self.log_end}: the topic was "
                "recreated or truncated, and its new messages would be skipped"
            )
        stored = "nothing applied yet" if self.stored is None else f"the stored position {self.stored}"
        return (
            f"{where}: {stored}, but the log starts at {self.log_start}: retention deleted messages "
            "that were never applied, and the read model would miss them"
        )


def misfits(
    stored: Mapping[TopicPartition, int],
    log_start: Mapping[TopicPartition, int],
    log_end: Mapping[TopicPartition, int],
) -> list[Misfit]:
    """The partitions whose stored position (0 when none is stored) is outside [log start, log end]."""
    out = []
    for tp in sorted(log_end):
        position = stored.get(tp)
        start, end = log_start.get(tp, 0), log_end[tp]
        if (position if position is not None else 0) < start or (position is not None and position > end):
            out.append(Misfit(tp, position, start, end))
    return out


def _columns(offsets: Mapping[TopicPartition, int]) -> tuple[list[str], list[int], list[int]]:
    """Topics, partitions and offsets as three arrays, in partition order (so rows are locked in one order)."""
    ordered = sorted(offsets)
    return [tp.topic for tp in ordered], [tp.partition for tp in ordered], [offsets[tp] for tp in ordered]
