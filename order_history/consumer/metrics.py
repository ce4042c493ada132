"""The consumer's metrics (prometheus-client), served on its own port (`shared.metrics.serve`).

Counted as parts commit (`record_part`): events applied per type, dead
letters, parked records, messages per part, the time to apply a part;
rebalances as they happen. Read from the live consumers' state at each scrape
(`LiveState`): lag per partition (the log's end, as the last fetch saw it or
as asked every few seconds, minus the next offset to apply), how long each
partition with lag has not advanced (stuck, not just slow, once that grows),
freshness (now minus `occurred_at` of the newest event applied by this
process; an event from the future counts as applied when it was), staleness
(what the API reports, as this process knows it: docs/freshness.md), and
whether the consumer has halted on positions that do not fit the log.

The scrape reads a consumer through `ConsumerState` alone, so this module
imports nothing of the consumer: the runner registers itself in `LIVE`.
`Gauge` and `ScrapedGauges` are the helpers for gauges computed at scrape
time; order_history/ops/watch.py builds the read model's trust figures on them.
"""

from __future__ import annotations

import datetime as dt
import time
import weakref
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from aiokafka import TopicPartition
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from order_history.projection.apply import BatchStats

APPLIED: Final = Counter("consumer_events_applied_total", "Events applied to the read model", ["event_type"])
DEAD_LETTERS: Final = Counter("consumer_dead_letters_total", "Messages sent to a dead-letter topic")
PARKED: Final = Counter(
    "consumer_parked_records_total",
    "Records neither applied nor sent to a dead-letter topic: parked in the read database",
)
PART_EVENTS: Final = Histogram(
    "consumer_batch_events",
    "Messages in one applied part (one lane's transaction)",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
APPLY_SECONDS: Final = Histogram(
    "consumer_apply_seconds",
    "Time to apply one part, retries included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REBALANCES: Final = Counter("consumer_rebalances_total", "Partition revocations this consumer went through")


def record_part(stats: BatchStats, took: float) -> None:
    for event_type, count in stats.what.by_type.items():
        APPLIED.labels(event_type).inc(count)
    if stats.dead_lettered:
        DEAD_LETTERS.inc(stats.dead_lettered)
    if stats.parked:
        PARKED.inc(stats.parked)
    PART_EVENTS.observe(stats.events)
    APPLY_SECONDS.observe(took)


@dataclass(frozen=True)
class Gauge:
    """A gauge computed at scrape time: its name (written here once), what it means, its labels."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))

    def of(self, value: float) -> GaugeMetricFamily:
        """The unlabelled gauge with one value."""
        family = self.family()
        family.add_metric([], value)
        return family


class ScrapedGauges(Collector):
    """A collector of `gauges`, computed by `collect` at each scrape."""

    gauges: tuple[Gauge, ...] = ()

    def describe(self) -> Iterable[Metric]:
        # Names only, without computing anything (prometheus-client checks for duplicates).
        for gauge in self.gauges:
            yield gauge.family()


class ConsumerState(Protocol):
    """What a scrape reads of a live consumer (order_history/consumer/runner.py's `HistoryConsumer`)."""

    @property
    def halted(self) -> Collection[object]: ...  # not empty: it applies nothing more

    @property
    def newest_applied(self) -> dt.datetime | None: ...

    def lag(self) -> dict[TopicPartition, int]: ...

    def stuck(self) -> dict[TopicPartition, float]: ...

    def staleness(self) -> float | None: ...


_LAG: Final = Gauge(
    "consumer_lag_events",
    "Messages in the log not yet applied: log end offset (at most seconds old) minus the next offset to apply",
    ("topic", "partition"),
)
_STUCK: Final = Gauge(
    "consumer_partition_stuck_seconds",
    "Seconds since the partition's position last moved while it has lag (0 without lag)",
    ("topic", "partition"),
)
_FRESHNESS: Final = Gauge(
    "read_model_freshness_seconds", "Now minus occurred_at of the newest event applied by this process"
)
_STALENESS: Final = Gauge(
    "read_model_staleness_seconds",
    "Now minus the instant before which every event appended to the assigned partitions is applied: "
    "the caught-up time or the newest occurred_at applied, the later, of the least current partition",
)
_HALTED: Final = Gauge("consumer_halted", "1 while the consumer applies nothing: stored positions do not fit the log")


class LiveState(ScrapedGauges):
    """Lag, freshness and halt of every consumer of this process, computed at scrape time."""

    gauges = (_LAG, _STUCK, _FRESHNESS, _STALENESS, _HALTED)

    def __init__(self) -> None:
        self.consumers: weakref.WeakSet[ConsumerState] = weakref.WeakSet()

    def collect(self) -> Iterable[Metric]:
        lag, stuck, freshness, staleness, halted = (gauge.family() for gauge in self.gauges)
        # One process runs one consumer; should it run several (tests), each
        # partition's largest lag, the freshest model and any halt are shown.
        consumers = list(self.consumers)
        for labels, n in _largest_per_partition(c.lag() for c in consumers):
            lag.add_metric(list(labels), n)
        for labels, seconds in _largest_per_partition(c.stuck() for c in consumers):
            stuck.add_metric(list(labels), seconds)
        newest = [c.newest_applied for c in consumers if c.newest_applied is not None]
        if newest:
            freshness.add_metric([], max(0.0, time.time() - max(newest).timestamp()))
        stale = [s for s in (c.staleness() for c in consumers) if s is not None]
        if stale:
            staleness.add_metric([], max(stale))
        if consumers:
            halted.add_metric([], 1.0 if any(c.halted for c in consumers) else 0.0)
        yield lag
        yield stuck
        yield freshness
        yield staleness
        yield halted


LIVE: Final = LiveState()
REGISTRY.register(LIVE)


def _largest_per_partition(values: Iterable[Mapping[TopicPartition, float]]) -> list[tuple[tuple[str, str], float]]:
    """Per (topic, partition) label pair, the largest of the consumers' values, sorted by labels."""
    largest: dict[tuple[str, str], float] = {}
    for per_partition in values:
        for tp, value in per_partition.items():
            key = (tp.topic, str(tp.partition))
            largest[key] = max(value, largest.get(key, value))
    return sorted(largest.items())
