"""The order-history consumer: Kafka -> projection, exactly-once in effect.

Delivery semantics: Kafka delivers at least once; the effect is exactly once.
Positions (next offset per topic-partition) live in the read database, in the
table consumer_positions, and advance in the same transaction as the changes
their events made. On every partition assignment the consumer seeks to those
positions, so after a crash, a kill -9 or a rebalance it resumes from what its
own database says it applied. Kafka's committed offsets are written too, after
the database commit, only so that lag tools can read them.

A transaction locks the position rows of the partitions in its batch before it
writes anything, and applies no event below them: if two instances ever hold a
batch of one partition (during a rebalance), the second one applies nothing
twice. Usually one statement does it all (_TRACKED_APPLY); when some of the
batch was applied before, `process` skips those events.

Partitions are applied by `apply_connections` lanes at once, each lane one
transaction at a time on its own connection (see Lanes): a partition stays on
one lane while any of its messages wait there, so each partition's messages are
applied in order.

Poison messages go to `<topic>.dlq` (raw value, with the reason and the original
topic/partition/offset as headers) and to the dead_letters table, then are
skipped. A database outage is not poison: the batch is retried, then the
consumer re-seeks to the database's positions and reads again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from order_history.projections import PARAMS, PreparedBatch, apply_prepared, apply_sql, prepare, reduce_events
from shared.database import REFUSED_DATA_ERRORS, WAIT_OUT_ERRORS, Connection
from shared.events import TOPICS, Event, PoisonMessage, decode_event, dlq_topic

log = logging.getLogger(__name__)

# The consumer's database sessions (bench.apply_sql uses them too).
SESSION_SETTINGS: Final = {
    "timezone": "UTC",
    # A part's transaction holds both its read-model changes and its positions,
    # so a commit lost in a database crash is lost whole and simply re-applied
    # from the older positions: waiting for the WAL flush buys nothing here (it
    # only slows every part down).
    "synchronous_commit": "off",
    # The batch statement reaches every row by primary key, whatever the sizes:
    # one generic plan serves every batch. A custom plan would also parse each
    # batch's array literals a second time, at planning (measured: about 6% of
    # the database's time).
    "plan_cache_mode": "force_generic_plan",
}

# A batch decoded ahead of time: per partition, for each of its messages in order,
# the event or the reason it is poison.
Decoded = dict[TopicPartition, list["Event | str"]]

# The prefetcher takes this many messages from aiokafka at a time, decodes them,
# then lets the loop run (to send the current batch's next statement), so that
# Python's work on the next batch and PostgreSQL's on the current one overlap
# without delaying the current one: one getmany of a whole batch kept the loop
# for some 50 ms, and every statement of the current batch waited for it.
FETCH_SLICE = 500
FETCH_WHILE_FULL_MS = 5


@dataclass
class Part:
    """Messages of some partitions, decoded, and their statement's parameters: one lane's transaction.

    `prepared` assumes every valid event of the part is new; `process` uses it
    when that holds (the usual case) and prepares again when it does not.
    """

    records: dict[TopicPartition, list[ConsumerRecord]]
    decoded: Decoded
    prepared: PreparedBatch

    def __len__(self) -> int:
        return sum(map(len, self.records.values()))


class Lanes:
    """Which lane applies each partition's next messages.

    Each lane applies its parts one after another, in its own transactions; the
    lanes run at once. A partition stays on its lane while any of its messages
    are queued or being applied there, so every partition's messages are applied
    in offset order. A partition with none waiting goes to the open lane (one
    with room for a part) with the fewest messages waiting: the lanes stay about
    equally loaded, and each lane starts its next part as soon as it is done with
    the last, whatever the other lanes are doing. (One transaction per batch,
    split by partition, would make every part wait for the batch's slowest.)
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.lane_of: dict[TopicPartition, int] = {}  # partitions with messages waiting
        self._pending: dict[TopicPartition, int] = {}  # messages queued or being applied, per partition

    @property
    def waiting(self) -> list[int]:
        """Messages queued or being applied, per lane."""
        per_lane = [0] * self.count
        for tp, pending in self._pending.items():
            per_lane[self.lane_of[tp]] += pending
        return per_lane

    def route(
        self, sizes: dict[TopicPartition, int], open_lanes: Collection[int] | None = None
    ) -> dict[int, list[TopicPartition]]:
        """Give each partition of a fetched batch (with its message count) a lane: lane -> its partitions.

        A partition with messages waiting keeps its lane; the others go to one of
        `open_lanes` (default: every lane).
        """
        candidates = range(self.count) if open_lanes is None else open_lanes
        routed: dict[int, list[TopicPartition]] = {}
        for tp in sorted(sizes, key=lambda t: (-sizes[t], t)):
            lane = self.lane_of.get(tp)
            if lane is None:
                waiting = self.waiting
                lane = self.lane_of[tp] = min(candidates, key=lambda i: (waiting[i], i))
            routed.setdefault(lane, []).append(tp)
            self._pending[tp] = self._pending.get(tp, 0) + sizes[tp]
        return routed

    def bound_to(self, lanes: Collection[int]) -> set[TopicPartition]:
        """The partitions with messages waiting on one of `lanes`."""
        return {tp for tp, lane in self.lane_of.items() if lane in lanes}

    def done(self, sizes: dict[TopicPartition, int]) -> None:
        """A lane is done with these messages (applied, skipped or given up): a partition
        with nothing left waiting may go to another lane next time."""
        for tp, size in sizes.items():
            self._pending[tp] -= size
            if not self._pending[tp]:
                del self._pending[tp]
                del self.lane_of[tp]


@dataclass
class ConsumerConfig:
    dsn: str
    bootstrap_servers: str
    group: str = "order-history"
    topics: tuple[str, ...] = TOPICS
    max_records: int = 15000
    fetch_timeout_ms: int = 100
    max_backoff: float = 5.0
    session_timeout_ms: int = 10000
    apply_connections: int = 2
    client_id: str = "order-history-consumer"
    topic_prefix: str = ""

    def kafka_topic(self, topic: str) -> str:
        return self.topic_prefix + topic

    def contract_topic(self, kafka_topic: str) -> str:
        return kafka_topic.removeprefix(self.topic_prefix)


@dataclass
class BatchStats:
    events: int = 0
    applied: int = 0
    skipped_seen: int = 0
    poison: int = 0

    def add(self, other: BatchStats) -> None:
        self.events += other.events
        self.applied += other.applied
        self.skipped_seen += other.skipped_seen
        self.poison += other.poison


class Positions:
    """consumer_positions: the tracking records of one consumer group."""

    def __init__(self, group: str) -> None:
        self.group = group

    async def load(self, conn: Connection, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        rows = await conn.fetch(
            """SELECT topic, partition, next_offset FROM consumer_positions
               WHERE consumer_group = $1 AND topic = ANY($2::text[])""",
            self.group,
            sorted({tp.topic for tp in tps}),
        )
        wanted = set(tps)
        found = {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        return {tp: off for tp, off in found.items() if tp in wanted}

    async def lock(self, conn: Connection, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Lock the position rows of `tps` (in a fixed order) and return them; creates missing rows at 0."""
        ordered = sorted(tps)
        topics = [tp.topic for tp in ordered]
        parts = [tp.partition for tp in ordered]
        rows = await self._select_for_update(conn, topics, parts)
        if len(rows) < len(ordered):  # a partition's first batch: one more round trip, once
            await conn.execute(
                """INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset)
                   SELECT $1, t, p, 0 FROM unnest($2::text[], $3::integer[]) AS x(t, p)
                   ON CONFLICT DO NOTHING""",
                self.group,
                topics,
                parts,
            )
            rows = await self._select_for_update(conn, topics, parts)
        return {TopicPartition(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}

    async def _select_for_update(self, conn: Connection, topics: list[str], parts: list[int]) -> list[asyncpg.Record]:
        return await conn.fetch(
            """SELECT c.topic, c.partition, c.next_offset FROM consumer_positions c
               JOIN unnest($2::text[], $3::integer[]) AS x(t, p) ON c.topic = x.t AND c.partition = x.p
               WHERE c.consumer_group = $1
               ORDER BY c.topic, c.partition FOR UPDATE OF c""",
            self.group,
            topics,
            parts,
        )

    async def advance(self, conn: Connection, next_offsets: dict[TopicPartition, int]) -> None:
        ordered = sorted(next_offsets)
        await conn.execute(
            """UPDATE consumer_positions c SET next_offset = x.o, updated_at = now()
               FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS x(t, p, o)
               WHERE c.consumer_group = $1 AND c.topic = x.t AND c.partition = x.p AND c.next_offset < x.o""",
            self.group,
            [tp.topic for tp in ordered],
            [tp.partition for tp in ordered],
            [next_offsets[tp] for tp in ordered],
        )


# A part in one statement, its own transaction, one round trip: lock the part's
# position rows; if every one exists and none is past the part's first offset
# (nothing of it applied yet: the usual case), advance them and apply the part.
# Otherwise it changes nothing and says so (ok = false), and `process` takes over.
_TRACKED_APPLY = apply_sql(
    before=f"""pos AS (
    SELECT c.topic, c.partition, c.next_offset, x.first_offset, x.end_offset
    FROM consumer_positions AS c
    JOIN unnest(${PARAMS + 2}::text[], ${PARAMS + 3}::integer[], ${PARAMS + 4}::bigint[], ${PARAMS + 5}::bigint[])
        AS x(t, p, first_offset, end_offset) ON c.topic = x.t AND c.partition = x.p
    WHERE c.consumer_group = ${PARAMS + 1}
    ORDER BY c.topic, c.partition
    FOR UPDATE OF c
), ok AS (
    SELECT count(*) = cardinality(${PARAMS + 2}::text[]) AND COALESCE(bool_and(next_offset <= first_offset), false)
        AS ok
    FROM pos
), advanced AS (
    UPDATE consumer_positions AS c SET next_offset = pos.end_offset, updated_at = now()
    FROM pos
    WHERE (SELECT ok FROM ok) AND c.consumer_group = ${PARAMS + 1} AND c.topic = pos.topic
      AND c.partition = pos.partition
    RETURNING 1
)""",
    guard="(SELECT ok FROM ok)",
    select="(SELECT ok FROM ok) AS ok",
)


class _SeekFromDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: HistoryConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in revoked]})

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in assigned]})
        await self.owner.seek_to_stored_positions(list(assigned))


class HistoryConsumer:
    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.positions = Positions(config.group)
        self.pool: asyncpg.Pool | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._stopping = False
        self._last_kafka_commit = 0.0
        self._applied_ends: dict[TopicPartition, int] = {}  # applied, not yet committed to Kafka
        self.total = BatchStats()

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.config.dsn,
            min_size=1,
            max_size=self.config.apply_connections,
            command_timeout=60,
            server_settings=SESSION_SETTINGS,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            client_id=f"{self.config.client_id}-dlq",
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group,
            client_id=self.config.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=min(1000, self.config.session_timeout_ms // 3),
            max_poll_interval_ms=300000,
        )
        topics = [self.config.kafka_topic(t) for t in self.config.topics]
        self.consumer.subscribe(topics, listener=_SeekFromDatabase(self))
        await self.consumer.start()

    async def stop(self) -> None:
        self._stopping = True
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()

    def request_stop(self) -> None:
        self._stopping = True

    # -- positions -------------------------------------------------------------
    async def seek_to_stored_positions(self, tps: list[TopicPartition]) -> None:
        assert self.pool is not None and self.consumer is not None
        if not tps:
            return
        backoff = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn:
                    stored = await self.positions.load(conn, tps)
                break
            except WAIT_OUT_ERRORS as exc:
                log.warning("cannot read positions, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff)
        for tp in tps:
            if tp in stored:
                self.consumer.seek(tp, stored[tp])
        never_applied = [tp for tp in tps if tp not in stored]
        if never_applied:  # one request for all: each call waits for the fetcher's offset reset
            await self.consumer.seek_to_beginning(*never_applied)
        log.info(
            "seeked to stored positions",
            extra={"positions": {f"{tp.topic}[{tp.partition}]": stored.get(tp, 0) for tp in tps}},
        )

    # -- one batch -------------------------------------------------------------
    def decode(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> Decoded:
        """Decode every message of a batch: an Event, or the reason it is poison."""
        return {tp: self._decode_slice(tp, messages) for tp, messages in records.items()}

    async def fetch(
        self, partitions: Collection[TopicPartition] = (), timeout_ms: int | None = None
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], Decoded] | None:
        """Fetch and decode up to max_records messages of `partitions` (default: all
        assigned ones; None: nothing arrived in time). The other partitions' records
        stay in aiokafka's buffer.

        In slices of FETCH_SLICE, giving the event loop a turn after each. The
        first getmany waits up to `timeout_ms` (default fetch_timeout_ms); the
        next ones take only what aiokafka has already fetched.
        """
        assert self.consumer is not None
        records: dict[TopicPartition, list[ConsumerRecord]] = {}
        decoded: Decoded = {}
        total = 0
        timeout = self.config.fetch_timeout_ms if timeout_ms is None else timeout_ms
        while total < self.config.max_records:
            got = await self.consumer.getmany(
                *partitions, timeout_ms=timeout, max_records=min(FETCH_SLICE, self.config.max_records - total)
            )
            count = 0
            for tp, messages in got.items():
                if messages:
                    records.setdefault(tp, []).extend(messages)
                    decoded.setdefault(tp, []).extend(self._decode_slice(tp, messages))
                    count += len(messages)
            if not count:
                break
            total += count
            timeout = 0
            await asyncio.sleep(0)
        return (records, decoded) if records else None

    @staticmethod
    def part(records: dict[TopicPartition, list[ConsumerRecord]], decoded: Decoded) -> Part:
        """A lane's part: the messages and their statement's parameters, assuming every valid event is new."""
        events = [o for tp in records for o in decoded[tp] if not isinstance(o, str)]
        return Part(records, decoded, prepare(reduce_events(events), insert_created=True))

    def _decode_slice(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> list[Event | str]:
        topic = self.config.contract_topic(tp.topic)
        outcomes: list[Event | str] = []
        for msg in messages:
            try:
                outcomes.append(decode_event(msg.value, topic))
            except PoisonMessage as exc:
                outcomes.append(exc.reason)
        return outcomes

    async def process(
        self,
        records: dict[TopicPartition, list[ConsumerRecord]],
        refused: str | None = None,
        decoded: Decoded | None = None,
        prepared: PreparedBatch | None = None,
    ) -> BatchStats:
        """Apply one fetched batch in one transaction (with its DLQ messages).

        `decoded` holds the batch decoded ahead of time (else it is decoded here),
        `prepared` its statement's parameters for the case where all its valid
        events are new. With `refused`, every new message of the batch is
        dead-lettered with that reason.
        """
        if decoded is None:
            decoded = self.decode(records)
        assert self.pool is not None
        stats = BatchStats()
        async with self.pool.acquire() as conn, conn.transaction():
            stored = await self.positions.lock(conn, list(records))
            events: list[Event] = []
            poison: list[tuple[ConsumerRecord, str]] = []
            next_offsets: dict[TopicPartition, int] = {}
            for tp, messages in records.items():
                floor = stored.get(tp, 0)
                for msg, outcome in zip(messages, decoded[tp], strict=True):
                    stats.events += 1
                    if msg.offset < floor:
                        stats.skipped_seen += 1
                        continue
                    if refused is not None:
                        poison.append((msg, refused))
                        continue
                    if isinstance(outcome, str):
                        poison.append((msg, outcome))
                    else:
                        events.append(outcome)
                if messages:
                    next_offsets[tp] = max(floor, messages[-1].offset + 1)
            if poison:
                await self._dead_letter(conn, poison)
                stats.poison = len(poison)
            if prepared is None or stats.skipped_seen or refused is not None:
                prepared = prepare(reduce_events(events))  # some were applied before: not the prefetched set
            if len(prepared):
                # Upserts only: a goods.created may be here again (see projections.inserted).
                await apply_prepared(conn, prepared.upserts_only())
            stats.applied = len(events)
            await self.positions.advance(conn, next_offsets)
        return stats

    async def _dead_letter(self, conn: Connection, poison: list[tuple[ConsumerRecord, str]]) -> None:
        assert self.producer is not None
        futures = []
        for msg, reason in poison:
            headers = [
                ("dlq.reason", reason.encode()),
                ("dlq.original.topic", msg.topic.encode()),
                ("dlq.original.partition", str(msg.partition).encode()),
                ("dlq.original.offset", str(msg.offset).encode()),
            ]
            futures.append(
                await self.producer.send(dlq_topic(msg.topic), value=msg.value, key=msg.key, headers=headers)
            )
            log.warning(
                "poison message sent to DLQ",
                extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset, "reason": reason},
            )
        await asyncio.gather(*futures)
        await conn.executemany(
            """INSERT INTO dead_letters (topic, partition, "offset", reason) VALUES ($1, $2, $3, $4)
               ON CONFLICT DO NOTHING""",
            [(m.topic, m.partition, m.offset, r) for m, r in poison],
        )

    # -- the loop --------------------------------------------------------------
    async def run(self) -> None:
        """Apply what arrives, in lanes, until stopped.

        A prefetch task fetches, decodes and prepares the lanes' next parts while
        the lanes wait on the database, so Python's work and PostgreSQL's
        overlap. Each partition's parts stay in fetch order (see Lanes). If a
        lane has to give a part up (database outage), every lane stops, the
        queued parts are dropped and the consumer re-seeks to its stored
        positions, so nothing is skipped.
        """
        assert self.consumer is not None
        while not self._stopping:
            await self._run_lanes()
            if not self._stopping:
                await self.seek_to_stored_positions(list(self.consumer.assignment()))

    async def _run_lanes(self) -> None:
        """Run the prefetcher and the lanes until the consumer stops or a lane gives a part up.

        When stopping, each lane finishes the part it is applying; queued parts are dropped.
        """
        ways = self.config.apply_connections
        lanes = Lanes(ways)
        queues: list[asyncio.Queue[Part | None]] = [asyncio.Queue(1) for _ in range(ways)]
        room = asyncio.Event()  # set when a lane takes its queued part
        prefetch = asyncio.create_task(self._prefetch(lanes, queues, room))
        workers = [asyncio.create_task(self._lane(lanes, queue, room)) for queue in queues]
        try:
            done, _ = await asyncio.wait([prefetch, *workers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a task crashed: raise its error
            if prefetch in done:  # stopping: let each lane finish its current part
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
        assert self.consumer is not None
        while not self._stopping:
            room.clear()
            open_lanes = [i for i, queue in enumerate(queues) if queue.empty()]
            full = set(range(len(queues))) - set(open_lanes)
            partitions = self.consumer.assignment() - lanes.bound_to(full) if full else ()
            if not open_lanes or (full and not partitions):
                await room.wait()
                continue
            # While a lane is full, wait only briefly for the others' partitions:
            # the full lane may take its part meanwhile, and its partitions' next
            # messages are not fetched until this returns.
            fetched = await self.fetch(partitions, FETCH_WHILE_FULL_MS if full else None)
            if fetched is None:
                continue
            records, decoded = fetched
            for lane, tps in lanes.route({tp: len(m) for tp, m in records.items()}, open_lanes).items():
                queues[lane].put_nowait(self.part({tp: records[tp] for tp in tps}, {tp: decoded[tp] for tp in tps}))

    async def _lane(self, lanes: Lanes, queue: asyncio.Queue[Part | None], room: asyncio.Event) -> None:
        """Apply one lane's parts in order; return when told to stop, or when a part is given up."""
        while True:
            part = await queue.get()
            room.set()
            if part is None:
                return
            try:
                applied = await self._process_with_retry(part)
            finally:
                lanes.done({tp: len(m) for tp, m in part.records.items()})
            if not applied:
                return

    async def _process_with_retry(self, part: Part) -> bool:
        """Apply a part, retrying through short outages; False if it was given up."""
        assert self.consumer is not None
        records = part.records
        backoff = 0.1
        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                started = time.monotonic()
                try:
                    stats = await self._process_part(part)
                except REFUSED_DATA_ERRORS as exc:
                    stats = await self._isolate(records, exc, part.decoded)
            except (*WAIT_OUT_ERRORS, KafkaError) as exc:
                # Anything but a refusal of the data is the database's or Kafka's
                # state (down, no login, no permission...): wait, never skip.
                log.warning(
                    "batch not applied, will retry",
                    extra={"error": f"{type(exc).__name__}: {exc}", "attempt": attempt, "events": len(part)},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_backoff)
                if attempt >= 3:
                    return False  # a long outage: the caller resumes from the stored positions
                continue
            self._account(stats, records, time.monotonic() - started)
            await self._commit_to_kafka(records)
            return True
        return False

    async def _process_part(self, part: Part) -> BatchStats:
        stats = await self._apply_tracked(part)
        if stats is None:
            stats = await self.process(part.records, decoded=part.decoded, prepared=part.prepared)
        return stats

    async def _apply_tracked(self, part: Part) -> BatchStats | None:
        """`process` for the usual case, in one round trip (_TRACKED_APPLY); None if it is not that case.

        The usual case: no poison message, none of the part applied before, and
        no goods.created in it that the read model has seen already.
        Each statement sent waits for every event-loop turn before its reply is
        read, so one statement instead of five (BEGIN, lock, apply, advance,
        COMMIT) also saves the turns the prefetcher takes in between.
        """
        assert self.pool is not None
        if any(isinstance(outcome, str) for outcomes in part.decoded.values() for outcome in outcomes):
            return None
        ordered = sorted(part.records)
        async with self.pool.acquire() as conn:
            try:
                row = await conn.fetchrow(
                    _TRACKED_APPLY,
                    *part.prepared.params,
                    self.positions.group,
                    [tp.topic for tp in ordered],
                    [tp.partition for tp in ordered],
                    [part.records[tp][0].offset for tp in ordered],
                    [part.records[tp][-1].offset + 1 for tp in ordered],
                )
            except asyncpg.UniqueViolationError:
                # A goods.created of the part was delivered before (projections.inserted):
                # the statement changed nothing; `process` applies the part by upserts.
                return None
        assert row is not None
        if not row["ok"]:
            return None
        count = sum(map(len, part.records.values()))
        return BatchStats(events=count, applied=count)

    async def _isolate(
        self, records: dict[TopicPartition, list[ConsumerRecord]], error: Exception, decoded: Decoded | None
    ) -> BatchStats:
        """The database refused a valid-looking batch: apply its events one by one and
        dead-letter those it refuses, so that one bad event neither stops nor hides the rest."""
        log.warning("database refused a batch, applying it event by event", extra={"error": f"{error}"})
        total = BatchStats()
        if decoded is None:
            decoded = self.decode(records)
        for tp, messages in records.items():
            for msg, outcome in zip(messages, decoded[tp], strict=True):
                single = {tp: [msg]}
                one: Decoded = {tp: [outcome]}
                try:
                    stats = await self.process(single, decoded=one)
                except REFUSED_DATA_ERRORS as exc:
                    stats = await self.process(
                        single, refused=f"database refused the event: {type(exc).__name__}: {exc}", decoded=one
                    )
                total.add(stats)
        return total

    def _account(self, stats: BatchStats, records: dict[TopicPartition, list[ConsumerRecord]], took: float) -> None:
        self.total.add(stats)
        last = {f"{tp.topic}[{tp.partition}]": msgs[-1].offset for tp, msgs in records.items()}
        log.debug(
            "batch applied",
            extra={
                "events": stats.events,
                "applied": stats.applied,
                "skipped": stats.skipped_seen,
                "poison": stats.poison,
                "ms": round(took * 1000, 1),
                "last_offsets": last,
            },
        )

    async def _commit_to_kafka(self, records: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Best effort, at most once a second, for every lane's partitions: only for lag monitoring."""
        assert self.consumer is not None
        for tp, msgs in records.items():
            self._applied_ends[tp] = msgs[-1].offset + 1
        now = time.monotonic()
        if now - self._last_kafka_commit < 1.0:
            return
        self._last_kafka_commit = now
        assigned = self.consumer.assignment()
        offsets = {tp: end for tp, end in self._applied_ends.items() if tp in assigned}
        self._applied_ends.clear()
        try:
            await self.consumer.commit(offsets)
        except KafkaError:
            pass
