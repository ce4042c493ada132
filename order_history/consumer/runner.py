"""The order-history consumer's runner: Kafka clients, fetching ahead, and the lanes.

Delivery semantics: Kafka delivers at least once; the effect is exactly once.
The read model's positions (positions.py) advance in the same transaction as
the changes their events made, and on every assignment the consumer seeks to
them; after a crash, a kill -9 or a rebalance it resumes from what its own
database says it applied. Kafka's committed offsets are written too, after
the database commit, only so that lag tools can read them.

A prefetch task fetches, decodes and prepares the lanes' next parts while the
lanes wait on the database, so Python's work and PostgreSQL's overlap. Each
lane applies its parts one at a time (apply.py); a partition stays on one lane
while any of its messages wait there (lanes.py).

Every record is applied, dead-lettered or parked (dead_letters.py), whatever
it holds: a value that is not a valid event, or that makes the decoder or the
projection fail in a way nobody foresaw, is rejected; a batch the Kafka client
cannot read is parked record by record (`_unreadable`). No record stops the
process or holds its partition; a partition that has lag and does not advance
is reported as stuck (metrics.py), and an operator can park the record that
holds it (`order-history dlq skip`).

Freshness (docs/freshness.md): each part's statement records, beside the
positions, the newest occurred_at applied per partition; and every
freshness_interval the consumer asks for the log ends and records the
partitions whose applied position has reached an end it saw as caught up as
of when it asked. The API reads both to tell every answer how current it is.

Positions that do not fit the log (positions.misfits), found on assignment or
as an OffsetOutOfRange from the broker, stop the consumer: it applies nothing
more, logs why every minute, and stays up (for its metrics and `status`) until
an operator rebuilds the read model or resets the positions and restarts it.
A database or Kafka outage is waited out; nothing is ever skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Collection, Sequence
from typing import Final

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError, RecordTooLargeError

from order_history.api.consistency import CHANNEL as APPLIED_CHANNEL
from order_history.consumer import metrics
from order_history.consumer.lanes import Lanes
from order_history.projection.apply import Applier, BatchStats, Decision, Decoded, Part, Records, decide, offset_ranges
from order_history.projection.dead_letters import DLQ_MAX_BYTES, DeadLetters, Rejected, stand_in
from order_history.projection.positions import Misfit, Positions, PositionsRetired, misfits
from order_history.settings import Settings
from shared.backoff import Backoff
from shared.database import WAIT_OUT_ERRORS, create_pool
from shared.events import TOPICS, Event, PoisonMessage, decode_event
from shared.kafka import client_options, close_producer, start_producer
from shared.notify import Notifier

log = logging.getLogger(__name__)

# The consumer's database sessions (bench.apply_sql uses them too).
SESSION_SETTINGS: Final = {
    "timezone": "UTC",
    "application_name": "order-history-consumer",
    # A part's transaction holds both its read-model changes and its positions,
    # so a commit lost in a database crash is lost whole and simply re-applied
    # from the older positions: waiting for the WAL flush buys nothing here (it
    # only slows every part down).
    "synchronous_commit": "off",
    # The batch statement reaches every row by primary key, whatever the sizes:
    # one generic plan serves every batch. A custom plan would also parse each
    # batch's array literals a second time, at planning (docs/benchmarks.md, third round).
    "plan_cache_mode": "force_generic_plan",
}
_HALTED_REMINDER = 60.0
# Log ends seen and not yet reached, kept per partition: a partition that lags for
# longer than this many looks falls back on its newest occurred_at for freshness.
_ENDS_KEPT = 64
_MARK_ERRORS: tuple[type[Exception], ...] = (*WAIT_OUT_ERRORS, TimeoutError)


class _SeekFromDatabase(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: HistoryConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in revoked]})
        self.owner.rebalances += 1
        metrics.REBALANCES.inc()
        for tp in revoked:
            self.owner.applied_to.pop(tp, None)
            self.owner.log_ends.pop(tp, None)
            self.owner.advanced_at.pop(tp, None)
            self.owner.fetched_to.pop(tp, None)
            self.owner.forget_freshness(tp)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in assigned]})
        await self.owner.seek_to_stored_positions(list(assigned))


class HistoryConsumer:
    def __init__(
        self, settings: Settings, instance: str = "0", schema: str | None = None, publish_dead_letters: bool = True
    ) -> None:
        """`schema`: the read model's tables are there (a rebuild's), not on the role's search_path.
        `publish_dead_letters`: False records them in the read database only (a rebuild, whose poison
        messages the running consumers have sent to the DLQ topics already)."""
        self.settings = settings
        self.instance = instance
        self.schema = schema
        self.publish_dead_letters = publish_dead_letters
        self.positions = Positions(settings.consumer_group)
        self.pool: asyncpg.Pool | None = None
        # Wakes the APIs' reads that wait for a Consistency-Token (order_history/api/consistency.py).
        self.applied: Notifier | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.applier: Applier | None = None
        self.halted: list[Misfit] = []
        self.rebalances = 0
        self.total = BatchStats()
        self._stop = asyncio.Event()
        self._last_kafka_commit = 0.0
        self._applied_ends: dict[TopicPartition, int] = {}  # applied, not yet committed to Kafka
        # For the metrics: the next offset to apply per assigned partition, the newest event applied.
        self.applied_to: dict[TopicPartition, int] = {}
        self.log_ends: dict[TopicPartition, int] = {}
        # When each assigned partition's position last moved (or it was assigned): a stuck one has lag and an old one.
        self.advanced_at: dict[TopicPartition, float] = {}
        # Per assigned partition, the next offset not yet taken from aiokafka (see `_unreadable`).
        self.fetched_to: dict[TopicPartition, int] = {}
        self.newest_applied: dt.datetime | None = None
        # Freshness (the module docstring): per assigned partition, the log ends asked for and
        # when they were asked, oldest first, until the applied position reaches them; the newest
        # occurred_at applied by this process; and when it was last recorded caught up.
        self._ends_seen: dict[TopicPartition, collections.deque[tuple[int, dt.datetime]]] = {}
        self.newest_in: dict[TopicPartition, dt.datetime] = {}
        self.caught_up_at: dict[TopicPartition, dt.datetime] = {}
        self._side: asyncpg.Pool | None = None
        metrics.LIVE.consumers.add(self)

    def kafka_topic(self, topic: str) -> str:
        return self.settings.kafka_topic_prefix + topic

    def contract_topic(self, kafka_topic: str) -> str:
        return kafka_topic.removeprefix(self.settings.kafka_topic_prefix)

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.pool = await create_pool(
            s.database_url,
            s.apply_connections,
            min_size=1,
            command_timeout=60,
            acquire_timeout=60,
            session_settings={**SESSION_SETTINGS, **({"search_path": self.schema} if self.schema else {})},
            reset=True,
        )
        client_id = f"order-history-consumer-{self.instance}"
        self.producer = await start_producer(s, client_id=f"{client_id}-dlq", max_request_size=DLQ_MAX_BYTES)
        # A connection of its own: a NOTIFY, and the caught-up marks, must not wait behind the lanes'
        # transactions. The notifier owns it (and closes it).
        self._side = await create_pool(
            s.database_url,
            1,
            command_timeout=10,
            session_settings={**SESSION_SETTINGS, **({"search_path": self.schema} if self.schema else {})},
        )
        self.applied = Notifier(self._side, APPLIED_CHANNEL)
        self.applied.start()
        dead_letters = DeadLetters(self.producer if self.publish_dead_letters else None, s.dlq_delivery_timeout)
        self.applier = Applier(self.pool, self.positions, dead_letters)
        self.consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=s.consumer_group,
            client_id=client_id,
            enable_auto_commit=False,
            # Positions come from the read database; a fetch outside the log is an
            # error to stop on, never a reason to jump elsewhere (see `misfits`).
            auto_offset_reset="none",
            max_partition_fetch_bytes=s.partition_fetch_max_bytes,
            fetch_max_bytes=s.fetch_max_bytes,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(1000, s.session_timeout_ms // 3),
            max_poll_interval_ms=300000,
            request_timeout_ms=s.kafka_request_timeout_ms + s.session_timeout_ms,
        )
        self.consumer.subscribe([self.kafka_topic(t) for t in TOPICS], listener=_SeekFromDatabase(self))
        async with asyncio.timeout(s.kafka_request_timeout_ms / 1000 + 10):
            await self.consumer.start()

    async def close(self) -> None:
        """Close the clients (bounded, whatever the broker and the database do); `start` may run again."""
        consumer, producer, pool, applied = self.consumer, self.producer, self.pool, self.applied
        self.consumer = self.producer = self.pool = self.applier = self.applied = self._side = None
        if applied is not None:
            await applied.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), timeout=10)
        if producer is not None:
            await close_producer(producer)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:
                pool.terminate()

    async def stop(self) -> None:
        self.request_stop()
        await self.close()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        return self._stop

    def stuck(self) -> dict[TopicPartition, float]:
        """Per assigned partition: seconds since its position last moved, while it has lag (else 0)."""
        now = time.monotonic()
        return {tp: (now - self.advanced_at.get(tp, now)) if n > 0 else 0.0 for tp, n in self.lag().items()}

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: messages in the log (as the last fetch saw its end) not yet applied."""
        if self.consumer is None:
            return {}
        out = {}
        for tp, next_offset in list(self.applied_to.items()):
            ends = [e for e in (self.consumer.highwater(tp), self.log_ends.get(tp)) if e is not None]
            if ends:
                out[tp] = max(0, max(ends) - next_offset)
        return out

    # -- positions -------------------------------------------------------------
    async def seek_to_stored_positions(self, tps: list[TopicPartition]) -> None:
        """Seek to the positions of the read database, after checking that they fit the logs."""
        assert self.pool is not None and self.consumer is not None
        if not tps:
            return
        if self.halted:
            self.consumer.pause(*tps)
            return
        backoff = Backoff(0.1, self.settings.consumer_max_backoff, stop=self._stop)
        while True:
            try:
                async with self.pool.acquire(timeout=10) as conn:
                    stored = await self.positions.load(conn, tps)
                log_start = await self.consumer.beginning_offsets(tps)
                log_end = await self.consumer.end_offsets(tps)
                found = misfits(stored, log_start, log_end)
                first = {tp: log_start[tp] for tp in tps if tp not in stored}
                if first and not found:
                    # A partition's position row from its assignment on, not from its first
                    # applied record: `status` then sees a partition whose very first record
                    # holds it as it sees any other (the row's updated_at stays put).
                    async with self.pool.acquire(timeout=10) as conn:
                        await self.positions.create(conn, first)
                break
            except (*WAIT_OUT_ERRORS, KafkaError) as exc:
                log.warning("cannot read positions, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                if self.stopping:
                    return
                await backoff.wait()
        if found:
            self.halt(found)
            return
        for tp in tps:
            if tp in stored:
                self.consumer.seek(tp, stored[tp])
            self.applied_to[tp] = stored.get(tp, log_start[tp])
            self.fetched_to[tp] = self.applied_to[tp]
            self.advanced_at.setdefault(tp, time.monotonic())
        never_applied = [tp for tp in tps if tp not in stored]
        if never_applied:  # one request for all: each call waits for the fetcher's offset reset
            await self.consumer.seek_to_beginning(*never_applied)
        log.info(
            "seeked to stored positions",
            extra={"positions": {f"{tp.topic}[{tp.partition}]": stored.get(tp, 0) for tp in tps}},
        )

    def halt(self, found: list[Misfit]) -> None:
        """Apply nothing more: the stored positions do not fit the log (see the module docstring)."""
        assert self.consumer is not None
        known = {m.tp for m in self.halted}
        self.halted.extend(m for m in found if m.tp not in known)
        self.consumer.pause(*self.consumer.assignment())
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

    async def _out_of_range(self, error: OffsetOutOfRangeError) -> None:
        """The broker refused a fetch offset: a misfit found while running."""
        assert self.consumer is not None
        offsets: dict[TopicPartition, int] = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
        tps = list(offsets) or list(self.consumer.assignment())
        log_start = await self.consumer.beginning_offsets(tps)
        log_end = await self.consumer.end_offsets(tps)
        found = misfits(offsets, log_start, log_end) or [
            Misfit(tp, offsets.get(tp), log_start[tp], log_end[tp]) for tp in tps
        ]
        self.halt(found)

    # -- fetching ----------------------------------------------------------------
    def decode(self, records: Records) -> Decoded:
        """Decode every message of a batch: an Event, or the reason it is poison."""
        return {tp: self._decode_slice(tp, messages) for tp, messages in records.items()}

    def _decode_slice(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> list[Event | Rejected]:
        topic = self.contract_topic(tp.topic)
        outcomes: list[Event | Rejected] = []
        for message in messages:
            try:
                outcomes.append(decode_event(message.value, topic))
            except PoisonMessage as exc:
                outcomes.append(Rejected(exc.reason))
            except Exception as exc:  # a value may hold anything: a verdict on it, never a reason to stop
                log.exception("decoding failed in a way nobody foresaw", extra=_origin(message))
                outcomes.append(Rejected(f"the decoder failed on it: {type(exc).__name__}: {exc}"[:2000]))
        return outcomes

    async def fetch(
        self, partitions: Collection[TopicPartition] = (), timeout_ms: int | None = None
    ) -> tuple[Records, Decoded] | None:
        """Fetch and decode up to batch_max_records messages of `partitions` (default: all
        assigned ones; None: nothing arrived in time). The other partitions' records
        stay in aiokafka's buffer.

        In slices of fetch_slice, giving the event loop a turn after each. The
        first getmany waits up to `timeout_ms` (default fetch_timeout_ms); the
        next ones take only what aiokafka has already fetched.
        """
        assert self.consumer is not None
        s = self.settings
        records: Records = {}
        decoded: Decoded = {}
        total = 0
        timeout = s.fetch_timeout_ms if timeout_ms is None else timeout_ms
        while total < s.batch_max_records:
            try:
                got = await self.consumer.getmany(
                    *partitions, timeout_ms=timeout, max_records=min(s.fetch_slice, s.batch_max_records - total)
                )
            except (NoOffsetForPartitionError, OffsetOutOfRangeError):
                if records:  # keep what was taken; aiokafka raises the error again on the next call
                    break
                raise
            except Exception as exc:  # a batch the client cannot read (see `_unreadable`)
                if records:  # keep what was taken; the next fetch meets the batch again
                    break
                return await self._unreadable(partitions, exc)
            count = 0
            for tp, messages in got.items():
                if messages:
                    records.setdefault(tp, []).extend(messages)
                    decoded.setdefault(tp, []).extend(self._decode_slice(tp, messages))
                    self.fetched_to[tp] = messages[-1].offset + 1
                    count += len(messages)
            if not count:
                break
            total += count
            timeout = 0
            await asyncio.sleep(0)
        return (records, decoded) if records else None

    async def _unreadable(
        self, partitions: Collection[TopicPartition], error: Exception
    ) -> tuple[Records, Decoded] | None:
        """aiokafka could not read a fetched batch (a header key that is not UTF-8, a corrupt or
        oversized batch...): find its partition, and park the record at its position.

        aiokafka does not say which partition failed, and drops what it had read of the
        failed fetch, though it has moved those partitions' positions past it: every
        partition is sought back to the next offset this consumer has not taken (a record
        dropped so would be skipped), and taking each partition's records one at a time
        then fetches them again and stops at the record that fails. The records taken on
        the way are returned with it.
        The client cannot step over a record it cannot read: the records after it in the
        same batch fail the same way, and are parked in turn, their content unknown.
        """
        assert self.consumer is not None
        records: Records = {}
        decoded: Decoded = {}
        if isinstance(error, RecordTooLargeError) and len(error.args) >= 3:
            # aiokafka itself moved past the record it could not fetch (brokers before Kafka 0.10.1 only).
            tp, offset = error.args[1], error.args[2]
            if isinstance(tp, TopicPartition) and isinstance(offset, int):
                return self._park_unreadable(tp, offset, error, records, decoded, seek=False)
        log.warning("fetch failed, finding the record", extra={"error": f"{type(error).__name__}: {error}"})
        candidates = sorted(partitions or self.consumer.assignment())
        for tp in candidates:
            if tp in self.fetched_to:
                self.consumer.seek(tp, self.fetched_to[tp])
        # The failed partition's batch comes again with its next fetch, in a moment: pass over
        # the partitions without waiting on any, until it does (or what was taken can go).
        deadline = time.monotonic() + max(self.settings.fetch_timeout_ms / 1000, 1.0)
        while True:
            for tp in candidates:
                # One record at a time, so that the error comes at the record that raises it.
                for _ in range(self.settings.fetch_slice):
                    try:
                        got = await self.consumer.getmany(tp, timeout_ms=0, max_records=1)
                    except (NoOffsetForPartitionError, OffsetOutOfRangeError):
                        return (records, decoded) if records else None  # the caller meets it again
                    except Exception as exc:
                        offset = self.fetched_to.get(tp)
                        if offset is None:
                            offset = await self.consumer.position(tp)
                        return self._park_unreadable(tp, offset, exc, records, decoded, seek=True)
                    messages = got.get(tp)
                    if not messages:
                        break
                    records.setdefault(tp, []).extend(messages)
                    decoded.setdefault(tp, []).extend(self._decode_slice(tp, messages))
                    self.fetched_to[tp] = messages[-1].offset + 1
            if records or time.monotonic() > deadline:
                return (records, decoded) if records else None
            await asyncio.sleep(0.01)

    def _park_unreadable(
        self, tp: TopicPartition, offset: int, error: Exception, records: Records, decoded: Decoded, seek: bool
    ) -> tuple[Records, Decoded]:
        """Add a stand-in for the unreadable record at `offset` of `tp` (to be parked), and fetch on after it."""
        assert self.consumer is not None
        unknown = stand_in(tp.topic, tp.partition, offset)
        reason = f"the Kafka client cannot read the batch holding it: {type(error).__name__}: {error}"[:2000]
        log.error("unreadable record, parking it", extra={**_origin(unknown), "error": reason})
        if seek:
            self.consumer.seek(tp, offset + 1)
        self.fetched_to[tp] = offset + 1
        records.setdefault(tp, []).append(unknown)
        decoded.setdefault(tp, []).append(Rejected(reason, park="unreadable: its key, value and size are unknown"))
        return records, decoded

    # -- the loop --------------------------------------------------------------
    async def run(self) -> None:
        """Apply what arrives, in lanes, until stopped (or halted: then wait until stopped).

        If a lane has to give a part up (a long database outage), every lane
        stops, the queued parts are dropped and the consumer re-seeks to its
        stored positions, so nothing is skipped.
        """
        assert self.consumer is not None
        tracker = asyncio.create_task(self._track_log_ends())
        try:
            while not self.stopping:
                if self.halted:
                    await self._wait_halted()
                    continue
                await self._run_lanes()
                if not self.stopping and not self.halted:
                    await self.seek_to_stored_positions(list(self.consumer.assignment()))
        finally:
            tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracker

    async def _track_log_ends(self) -> None:
        """Every freshness_interval: the log ends of the assigned partitions (for the lag metric, and
        for freshness), then the partitions caught up with them recorded as such (`_mark_caught_up`).

        The fetches' high watermarks are fresher, but only for partitions being
        fetched: while the lanes are full the prefetcher fetches nothing for
        theirs, and lag must still grow.
        """
        assert self.consumer is not None
        interval = self.settings.freshness_interval
        while not self.stopping:
            started = time.monotonic()
            assigned = list(self.consumer.assignment())
            if assigned:
                # Taken before asking: the ends cover every event appended before this instant.
                asked_at = dt.datetime.now(dt.UTC)
                with contextlib.suppress(KafkaError, OSError):
                    ends = await self.consumer.end_offsets(assigned)
                    self.log_ends.update(ends)
                    self._saw_ends(ends, asked_at)
                await self._mark_caught_up()
            with contextlib.suppress(TimeoutError):
                # One look per interval, however long the look took (but never none between two).
                rest = max(interval - (time.monotonic() - started), interval / 10)
                await asyncio.wait_for(self._stop.wait(), timeout=rest)

    def _saw_ends(self, ends: dict[TopicPartition, int], at: dt.datetime) -> None:
        for tp, end in ends.items():
            if tp in self.applied_to:  # assigned and sought (a revoked one's ends are no longer ours)
                self._ends_seen.setdefault(tp, collections.deque(maxlen=_ENDS_KEPT)).append((end, at))

    async def _mark_caught_up(self) -> None:
        """Record each partition whose applied position has reached a log end it saw as caught up as of
        when it asked for that end.

        Under load a partition seldom holds all of the end it has just seen, but it
        reaches the ends seen a moment before: each is kept until reached, so a
        busy partition's mark trails its log by about its apply delay. Not while
        halted: a position past a recreated topic's end has not applied that log.
        """
        if self.halted or self._side is None:
            return
        reached: dict[TopicPartition, tuple[int, dt.datetime]] = {}
        for tp, seen in self._ends_seen.items():
            applied = self.applied_to.get(tp)
            while applied is not None and seen and seen[0][0] <= applied:
                reached[tp] = seen.popleft()
        if not reached:
            return
        try:
            async with self._side.acquire(timeout=self.settings.freshness_interval * 4) as conn:
                await self.positions.mark_caught_up(conn, reached)
        except _MARK_ERRORS as exc:
            # The next round marks them again, from the ends it sees then.
            log.debug("cannot record caught-up partitions", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        for tp, (_, at) in reached.items():
            self.caught_up_at[tp] = max(at, self.caught_up_at.get(tp, at))

    def forget_freshness(self, tp: TopicPartition) -> None:
        """A revoked partition: its freshness is its next owner's to record."""
        self._ends_seen.pop(tp, None)
        self.newest_in.pop(tp, None)
        self.caught_up_at.pop(tp, None)

    def staleness(self) -> float | None:
        """Seconds since the instant before which every event of the assigned partitions is applied,
        as this process knows it (docs/freshness.md); None without partitions or while one is unknown."""
        instants = []
        for tp in list(self.applied_to):
            known = [t for t in (self.newest_in.get(tp), self.caught_up_at.get(tp)) if t is not None]
            if not known:
                return None
            instants.append(max(known))
        if not instants:
            return None
        return max(0.0, (dt.datetime.now(dt.UTC) - min(instants)).total_seconds())

    async def _wait_halted(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=_HALTED_REMINDER)
        if not self.stopping:
            log.error(
                "consumer still stopped: stored positions do not fit the log",
                extra={"partitions": [m.reason for m in self.halted]},
            )

    async def _run_lanes(self) -> None:
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
        assert self.consumer is not None
        while not self.stopping and not self.halted:
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
            try:
                fetched = await self.fetch(partitions, self.settings.fetch_while_full_ms if full else None)
            except OffsetOutOfRangeError as exc:
                await self._out_of_range(exc)
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
                applied = await self._apply_with_retry(part)
            finally:
                lanes.done(part.sizes())
            # Nor while the lane waits for its next part: an idle consumer would hold its last batch.
            del part
            if not applied:
                return

    async def _apply_with_retry(self, part: Part) -> bool:
        """Apply a part, retrying through short outages; False if it was given up."""
        assert self.applier is not None
        backoff = Backoff(0.1, self.settings.consumer_max_backoff, stop=self._stop)
        attempt = 0
        park = False  # Kafka took none of the part's dead letters on the last tries: park them
        while not self.stopping:
            attempt += 1
            started = time.monotonic()
            try:
                try:
                    stats = await self.applier.apply(part, park)
                except Exception as exc:
                    if decide(exc, attempt) is not Decision.ISOLATE:
                        raise
                    stats = await self.applier.isolating(part.records, part.decoded, exc, park)
            except PositionsRetired:
                # A rebuild switched the read model: the stored positions to resume from are the new one's.
                log.warning("read model replaced by a rebuild, re-reading positions", extra=offset_ranges(part.records))
                return False
            except (*WAIT_OUT_ERRORS, KafkaError) as exc:
                # The database's or Kafka's state (down, no login, no permission...): wait, never skip.
                decision = decide(exc, attempt)
                log.warning(
                    {
                        Decision.RETRY: "batch not applied, will retry",
                        Decision.PARK: "dead letters not delivered, parking them",
                        Decision.GIVE_UP: "batch given up, will re-read",
                    }.get(decision, "batch not applied"),
                    extra={"error": f"{type(exc).__name__}: {exc}", "attempt": attempt, **offset_ranges(part.records)},
                )
                if decision is Decision.PARK:
                    park = True
                    continue
                if decision is Decision.GIVE_UP:
                    return False  # a long outage: the caller resumes from the stored positions
                await backoff.wait()
                continue
            self._account(stats, part.records, time.monotonic() - started)
            await self._commit_to_kafka(part.records)
            return True
        return False

    def _account(self, stats: BatchStats, records: Records, took: float) -> None:
        if self.applied is not None:
            self.applied.poke()
        self.total.add(stats)
        metrics.record_part(stats, took)
        now = time.monotonic()
        for tp, messages in records.items():
            self.applied_to[tp] = max(self.applied_to.get(tp, 0), messages[-1].offset + 1)
            self.advanced_at[tp] = now
        newest = stats.what.newest
        if newest is not None and (self.newest_applied is None or newest > self.newest_applied):
            self.newest_applied = newest
        for tp, at in stats.what.newest_in.items():
            if tp not in self.newest_in or at > self.newest_in[tp]:
                self.newest_in[tp] = at
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

    async def _commit_to_kafka(self, records: Records) -> None:
        """Best effort, at most once a second, for every lane's partitions: only for lag monitoring."""
        assert self.consumer is not None
        for tp, messages in records.items():
            self._applied_ends[tp] = messages[-1].offset + 1
        now = time.monotonic()
        if now - self._last_kafka_commit < 1.0:
            return
        self._last_kafka_commit = now
        assigned = self.consumer.assignment()
        offsets = {tp: end for tp, end in self._applied_ends.items() if tp in assigned}
        self._applied_ends.clear()
        with contextlib.suppress(KafkaError):
            await self.consumer.commit(offsets)


def _origin(message: ConsumerRecord) -> dict[str, object]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}
