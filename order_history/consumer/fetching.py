"""Fetching and decoding: the records of a batch, and for each an Event or the reason it is poison.

Every record fetched comes out with a verdict, whatever it holds: a value that
is not a valid event, or that makes the decoder fail in a way nobody foresaw,
is `Rejected` (to be dead-lettered), never a reason to stop. A batch the Kafka
client cannot read is found and parked record by record (`_unreadable`): no
record stops the process or holds its partition.

Only the prefetch task fetches (runner.py); `Progress.fetched_to` keeps, per
partition, the next offset taken from aiokafka, so that records aiokafka drops
with a failed fetch are fetched again, not skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import NoOffsetForPartitionError, OffsetOutOfRangeError, RecordTooLargeError

from order_history.consumer.clients import Clients
from order_history.consumer.progress import Progress
from order_history.projection.apply import Decoded, Records
from order_history.projection.dead_letters import Rejected, stand_in
from order_history.settings import Settings
from shared.events import Event, PoisonMessage, decode_event

# The runner's logger, whichever module logs: operators' queries and alerts select on its name.
log = logging.getLogger("order_history.consumer.runner")


class Fetcher:
    def __init__(self, settings: Settings, clients: Clients, progress: Progress) -> None:
        self.settings = settings
        self.clients = clients
        self.progress = progress

    def decode(self, records: Records) -> Decoded:
        """Decode every message of a batch: an Event, or the reason it is poison."""
        return {tp: self._decode_slice(tp, messages) for tp, messages in records.items()}

    def _decode_slice(self, tp: TopicPartition, messages: list[ConsumerRecord]) -> list[Event | Rejected]:
        topic = tp.topic.removeprefix(self.settings.kafka_topic_prefix)
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
        c = self.clients
        assert c.consumer is not None
        s = self.settings
        fetched_to = self.progress.fetched_to
        records: Records = {}
        decoded: Decoded = {}
        total = 0
        timeout = s.fetch_timeout_ms if timeout_ms is None else timeout_ms
        while total < s.batch_max_records:
            try:
                got = await c.consumer.getmany(
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
                    fetched_to[tp] = messages[-1].offset + 1
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
        c = self.clients
        assert c.consumer is not None
        fetched_to = self.progress.fetched_to
        records: Records = {}
        decoded: Decoded = {}
        if isinstance(error, RecordTooLargeError) and len(error.args) >= 3:
            # aiokafka itself moved past the record it could not fetch (brokers before Kafka 0.10.1 only).
            tp, offset = error.args[1], error.args[2]
            if isinstance(tp, TopicPartition) and isinstance(offset, int):
                return self._park_unreadable(tp, offset, error, records, decoded, seek=False)
        log.warning("fetch failed, finding the record", extra={"error": f"{type(error).__name__}: {error}"})
        candidates = sorted(partitions or c.consumer.assignment())
        for tp in candidates:
            if tp in fetched_to:
                c.consumer.seek(tp, fetched_to[tp])
        # The failed partition's batch comes again with its next fetch, in a moment: pass over
        # the partitions without waiting on any, until it does (or what was taken can go).
        deadline = time.monotonic() + max(self.settings.fetch_timeout_ms / 1000, 1.0)
        while True:
            for tp in candidates:
                # One record at a time, so that the error comes at the record that raises it.
                for _ in range(self.settings.fetch_slice):
                    try:
                        got = await c.consumer.getmany(tp, timeout_ms=0, max_records=1)
                    except (NoOffsetForPartitionError, OffsetOutOfRangeError):
                        return (records, decoded) if records else None  # the caller meets it again
                    except Exception as exc:
                        offset = fetched_to.get(tp)
                        if offset is None:
                            offset = await c.consumer.position(tp)
                        return self._park_unreadable(tp, offset, exc, records, decoded, seek=True)
                    messages = got.get(tp)
                    if not messages:
                        break
                    records.setdefault(tp, []).extend(messages)
                    decoded.setdefault(tp, []).extend(self._decode_slice(tp, messages))
                    fetched_to[tp] = messages[-1].offset + 1
            if records or time.monotonic() > deadline:
                return (records, decoded) if records else None
            await asyncio.sleep(0.01)

    def _park_unreadable(
        self, tp: TopicPartition, offset: int, error: Exception, records: Records, decoded: Decoded, seek: bool
    ) -> tuple[Records, Decoded]:
        """Add a stand-in for the unreadable record at `offset` of `tp` (to be parked), and fetch on after it."""
        c = self.clients
        assert c.consumer is not None
        unknown = stand_in(tp.topic, tp.partition, offset)
        reason = f"the Kafka client cannot read the batch holding it: {type(error).__name__}: {error}"[:2000]
        log.error("unreadable record, parking it", extra={**_origin(unknown), "error": reason})
        if seek:
            c.consumer.seek(tp, offset + 1)
        self.progress.fetched_to[tp] = offset + 1
        records.setdefault(tp, []).append(unknown)
        decoded.setdefault(tp, []).append(Rejected(reason, park="unreadable: its key, value and size are unknown"))
        return records, decoded


def _origin(message: ConsumerRecord) -> dict[str, object]:
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset}
