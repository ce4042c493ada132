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

The read model's trust figures (`TRUST`) are read from the read database by
order_history/ops/watch.py every sampler interval, in every consumer process: the
divergence sampler's counts and full-pass age, and the orphan goods. The ages
go on growing between two reads (and while the database cannot be read), so
a sampler that stopped shows as an old pass rather than a frozen one.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from order_history.ops import orphans, sampler
from order_history.projection.apply import BatchStats

if TYPE_CHECKING:
    from order_history.consumer.runner import HistoryConsumer

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
SAMPLED_RANGES: Final = Counter(
    "read_model_reconcile_ranges_total", "Id ranges the divergence sampler of this process compared"
)
SAMPLED_SECONDS: Final = Counter(
    "read_model_reconcile_seconds_total", "Seconds the divergence sampler of this process spent comparing id ranges"
)


def record_part(stats: BatchStats, took: float) -> None:
    for event_type, count in stats.what.by_type.items():
        APPLIED.labels(event_type).inc(count)
    if stats.dead_lettered:
        DEAD_LETTERS.inc(stats.dead_lettered)
    if stats.parked:
        PARKED.inc(stats.parked)
    PART_EVENTS.observe(stats.events)
    APPLY_SECONDS.observe(took)


class LiveState(Collector):
    """Lag, freshness and halt of every consumer of this process, computed at scrape time."""

    def __init__(self) -> None:
        self.consumers: weakref.WeakSet[HistoryConsumer] = weakref.WeakSet()

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "consumer_lag_events",
            "Messages in the log not yet applied: log end offset (at most seconds old) minus the next offset to apply",
            labels=["topic", "partition"],
        )
        stuck = GaugeMetricFamily(
            "consumer_partition_stuck_seconds",
            "Seconds since the partition's position last moved while it has lag (0 without lag)",
            labels=["topic", "partition"],
        )
        freshness = GaugeMetricFamily(
            "read_model_freshness_seconds", "Now minus occurred_at of the newest event applied by this process"
        )
        staleness = GaugeMetricFamily(
            "read_model_staleness_seconds",
            "Now minus the instant before which every event appended to the assigned partitions is applied: "
            "the caught-up time or the newest occurred_at applied, the later, of the least current partition",
        )
        halted = GaugeMetricFamily(
            "consumer_halted", "1 while the consumer applies nothing: stored positions do not fit the log"
        )
        # One process runs one consumer; should it run several (tests), each
        # partition's largest lag, the freshest model and any halt are shown.
        consumers = list(self.consumers)
        behind: dict[tuple[str, str], int] = {}
        for consumer in consumers:
            for tp, n in consumer.lag().items():
                key = (tp.topic, str(tp.partition))
                behind[key] = max(n, behind.get(key, 0))
        for labels, n in sorted(behind.items()):
            lag.add_metric(list(labels), n)
        still: dict[tuple[str, str], float] = {}
        for consumer in consumers:
            for tp, seconds in consumer.stuck().items():
                key = (tp.topic, str(tp.partition))
                still[key] = max(seconds, still.get(key, 0.0))
        for labels, seconds in sorted(still.items()):
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

    def describe(self) -> Iterable[Metric]:
        # Names only, without touching the consumers (prometheus-client checks for duplicates).
        yield GaugeMetricFamily("consumer_lag_events", "", labels=["topic", "partition"])
        yield GaugeMetricFamily("consumer_partition_stuck_seconds", "", labels=["topic", "partition"])
        yield GaugeMetricFamily("read_model_freshness_seconds", "")
        yield GaugeMetricFamily("read_model_staleness_seconds", "")
        yield GaugeMetricFamily("consumer_halted", "")


LIVE: Final = LiveState()
REGISTRY.register(LIVE)


class TrustFigures(Collector):
    """The divergence and orphan figures as last read from the read database; nothing until the first read."""

    def __init__(self) -> None:
        self._read: tuple[sampler.Figures, orphans.Figures, float] | None = None

    def update(self, divergence: sampler.Figures, waiting: orphans.Figures) -> None:
        self._read = (divergence, waiting, time.monotonic())

    def collect(self) -> Iterable[Metric]:
        read = self._read
        if read is None:
            return
        divergence, waiting, read_at = read
        since = time.monotonic() - read_at
        yield _gauge(
            "read_model_divergent_rows",
            "Rows (entity and id) whose difference from the command side lasted the settle time, "
            "as the divergence sampler last found them",
            divergence.divergent,
        )
        yield _gauge(
            "read_model_divergence_unconfirmed_rows",
            "Differences the divergence sampler saw and has not confirmed yet (in flight, or not yet settled)",
            divergence.unconfirmed,
        )
        if divergence.full_pass_age is not None:
            yield _gauge(
                "read_model_reconcile_full_pass_age_seconds",
                "Seconds since the newest complete pass of the divergence sampler began: every id range has "
                "been compared since (before the first pass: since the sampler first ran)",
                divergence.full_pass_age + since,
            )
        yield _gauge("read_model_orphan_goods", "Live goods whose order the read model has not received", waiting.goods)
        yield _gauge(
            "read_model_oldest_orphan_age_seconds",
            "Seconds since the oldest orphan goods item was created (0 without orphans)",
            0.0 if waiting.oldest_age is None else waiting.oldest_age + since,
        )

    def describe(self) -> Iterable[Metric]:
        for name in _TRUST_NAMES:
            yield GaugeMetricFamily(name, "")


_TRUST_NAMES: Final = (
    "read_model_divergent_rows",
    "read_model_divergence_unconfirmed_rows",
    "read_model_reconcile_full_pass_age_seconds",
    "read_model_orphan_goods",
    "read_model_oldest_orphan_age_seconds",
)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


TRUST: Final = TrustFigures()
REGISTRY.register(TRUST)
