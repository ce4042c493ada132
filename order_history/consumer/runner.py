"""The order-history consumer: its clients' lifecycle and its loop, wiring the parts that do the work.

Delivery semantics: Kafka delivers at least once; the effect is exactly once.
The read model's positions (positions.py) advance in the same transaction as
the changes their events made, and on every assignment the consumer seeks to
them; after a crash, a kill -9 or a rebalance it resumes from what its own
database says it applied. Kafka's committed offsets are written too, after the
database commit, only so that lag tools can read them.

Every record is applied, dead-lettered or parked (dead_letters.py), whatever it
holds; no record stops the process or holds its partition. A partition that
has lag and does not advance is reported as stuck (metrics.py), and an
operator can park the record that holds it (`order-history dlq skip`). A
database or Kafka outage is waited out; nothing is ever skipped.

The parts, one job each:
- clients.py: the Kafka consumer, the dead-letter producer, the database pools;
- assignment.py: where each assigned partition resumes (the stored positions),
  and the halt on positions that do not fit the log;
- pipeline.py: the prefetch task and the lanes (lanes.py), each part applied
  through retry.py, counted, and committed to Kafka (commits.py);
- fetching.py: fetching and decoding, and parking the records aiokafka cannot read;
- progress.py: per-partition bookkeeping: lag, stuck, freshness;
- log_ends.py: the log ends asked every freshness_interval, the caught-up marks;
- metrics.py: read through `metrics.ConsumerState`, which `HistoryConsumer` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

from aiokafka import AIOKafkaConsumer, TopicPartition

from order_history.consumer import metrics
from order_history.consumer.assignment import Assignment, SeekFromDatabase
from order_history.consumer.clients import Clients
from order_history.consumer.commits import KafkaCommits
from order_history.consumer.fetching import Fetcher
from order_history.consumer.log_ends import LogEndTracker
from order_history.consumer.pipeline import Pipeline
from order_history.consumer.progress import Progress
from order_history.projection.apply import Applier, BatchStats, Decoded, Records
from order_history.projection.positions import Misfit, Positions
from order_history.settings import Settings


class HistoryConsumer:
    """One consumer of the event topics: `start`, then `run` until `stop` (see the module docstring)."""

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
        self._stop = asyncio.Event()
        self.clients = Clients()
        self.progress = Progress()
        self.assignment = Assignment(
            self.clients, self.positions, self.progress, settings.consumer_max_backoff, self._stop
        )
        self.fetcher = Fetcher(settings, self.clients, self.progress)
        self.pipeline = Pipeline(
            settings, self.clients, self.fetcher, self.assignment, self.progress, KafkaCommits(self.clients), self._stop
        )
        self.log_end_tracker = LogEndTracker(
            self.clients, self.positions, self.progress, self.halted, settings.freshness_interval, self._stop
        )
        metrics.LIVE.consumers.add(self)

    # -- what others read (the metrics: `metrics.ConsumerState`; `order-history rebuild`; tests) --
    @property
    def consumer(self) -> AIOKafkaConsumer | None:
        return self.clients.consumer

    @property
    def applier(self) -> Applier | None:
        return self.clients.applier

    @property
    def halted(self) -> list[Misfit]:
        return self.assignment.halted

    @property
    def total(self) -> BatchStats:
        return self.pipeline.total

    @property
    def newest_applied(self) -> dt.datetime | None:
        return self.progress.newest_applied

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: messages in the log (as the last fetch saw its end) not yet applied."""
        consumer = self.clients.consumer
        return {} if consumer is None else self.progress.lag(consumer.highwater)

    def stuck(self) -> dict[TopicPartition, float]:
        """Per assigned partition: seconds since its position last moved, while it has lag (else 0)."""
        consumer = self.clients.consumer
        return {} if consumer is None else self.progress.stuck(consumer.highwater)

    def staleness(self) -> float | None:
        return self.progress.staleness()

    def decode(self, records: Records) -> Decoded:
        return self.fetcher.decode(records)

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        listener = SeekFromDatabase(self.assignment)
        await self.clients.open(
            self.settings, self.instance, self.schema, self.publish_dead_letters, self.positions, listener
        )

    async def close(self) -> None:
        """Close the clients (bounded, whatever the broker and the database do); `start` may run again."""
        await self.clients.close()

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

    # -- the loop --------------------------------------------------------------
    async def run(self) -> None:
        """Apply what arrives, in lanes, until stopped (or halted: then wait until stopped).

        If a lane has to give a part up (a long database outage), every lane
        stops, the queued parts are dropped and the consumer re-seeks to its
        stored positions, so nothing is skipped.
        """
        assert self.consumer is not None
        tracker = asyncio.create_task(self.log_end_tracker.track())
        try:
            while not self.stopping:
                if self.halted:
                    await self.assignment.wait_halted()
                    continue
                await self.pipeline.run()
                if not self.stopping and not self.halted:
                    await self.assignment.seek_to_stored_positions(list(self.consumer.assignment()))
        finally:
            tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracker
