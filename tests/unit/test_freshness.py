"""The freshness of an answer: `Prefer: max-staleness` as read, and the watermark and staleness of a snapshot."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from order_history.api import freshness
from order_history.api.freshness import max_staleness_of, snapshot
from order_history.projection.positions import PartitionFreshness

NOW = dt.datetime(2026, 12, 7, 10, 15, 0, tzinfo=dt.UTC)


def at(seconds_ago: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds_ago)


READ = [
    ("max-staleness=500ms", 500),
    ("max-staleness=500", 500),
    ("max-staleness=2s", 2000),
    ("max-staleness=1.5s", 1500),
    ("max-staleness=0.25S", 250),
    ('max-staleness="750ms"', 750),
    ("MAX-Staleness = 10ms", 10),
    ("max-staleness=0", 0),
    ("max-staleness=1.9ms", 1),  # fractions of a millisecond are cut off
    ("wait=3, max-staleness=40", 40),
    ("max-staleness=40;foo=bar", 40),  # a parameter RFC 7240 allows, and ignored
    ("max-staleness=40, max-staleness=1", 40),  # the first one counts
]
# Ignored, as RFC 7240 asks: the read then has no bound.
IGNORED = [
    None,
    "",
    "wait=5",
    "max-staleness",
    "max-staleness=",
    "max-staleness=abc",
    "max-staleness=-5",
    "max-staleness=1h",
    "max-staleness=1e3",
    "max-staleness=1234567890",  # over nine digits
    "max-staleness=1.2345s",  # over three decimals
    'max-staleness="5',
    "max-stalenessx=5",
    "respond-async; max-staleness=5",  # a parameter of another preference, not a preference
    "max-staleness=abc, max-staleness=5",  # the first one counts, and it is malformed
]


@pytest.mark.parametrize(("prefer", "ms"), READ)
def test_max_staleness_is_read_in_ms_or_s(prefer: str, ms: int) -> None:
    assert max_staleness_of(prefer) == ms


@pytest.mark.parametrize("prefer", IGNORED)
def test_a_malformed_or_absent_max_staleness_is_ignored(prefer: str | None) -> None:
    assert max_staleness_of(prefer) is None


def p(topic: str, partition: int, newest: float | None, caught_up: float | None) -> PartitionFreshness:
    return PartitionFreshness(
        topic, partition, None if newest is None else at(newest), None if caught_up is None else at(caught_up)
    )


def test_the_staleness_is_the_least_current_partitions_and_an_idle_one_is_current() -> None:
    found = snapshot(
        [
            p("x.order.events", 0, 3600, 0.2),  # idle for an hour, caught up a moment ago: current
            p("x.order.events", 1, 2, None),  # never seen caught up: its newest event bounds it
            p("x.goods.events", 0, None, 0.3),  # an empty partition, seen caught up
        ],
        "x.",
    )
    assert found.watermarks == {"order.events": at(2), "goods.events": None}
    assert found.as_of == at(2)
    assert found.staleness_ms(NOW.timestamp()) == 2000
    assert found.staleness_ms(at(10).timestamp()) == 0  # a clock behind the consumer's: never negative
    header = found.watermark_header.decode()
    assert header == "order.events=2026-12-07T10:14:58.000000Z, goods.events=none"
    assert re.fullmatch(freshness.WATERMARK_PATTERN, header)


def test_a_partition_caught_up_before_its_newest_event_is_as_current_as_that_event() -> None:
    found = snapshot([p("order.events", 0, 1, 5), p("goods.events", 0, None, 0.5)])
    assert found.staleness_ms(NOW.timestamp()) == 1000


@pytest.mark.parametrize(
    "rows",
    [
        [],  # no consumer has said anything
        [p("order.events", 0, 1, 1)],  # no row of goods.events: no consumer was assigned it yet
        [p("order.events", 0, 1, 1), p("goods.events", 0, None, None)],  # assigned, nothing known yet
        [p("other.order.events", 0, 1, 1), p("goods.events", 0, 1, 1)],  # another prefix's topic
    ],
)
def test_staleness_is_unknown_until_every_topic_has_partitions_that_know_it(rows: list[PartitionFreshness]) -> None:
    found = snapshot(rows)
    assert found.as_of is None and found.staleness_ms(NOW.timestamp()) is None
    names = dict(found.headers(NOW.timestamp()))
    assert names[b"read-model-staleness"] == b"unknown"
    assert re.fullmatch(freshness.STALENESS_PATTERN, "unknown")


def test_the_headers_name_the_bound_met() -> None:
    found = snapshot([p("order.events", 0, 0.1, None), p("goods.events", 0, None, 0.05)])
    headers = dict(found.headers(NOW.timestamp(), applied=500))
    assert headers[b"read-model-staleness"] == b"100"
    assert headers[b"preference-applied"] == b"max-staleness=500ms"
    assert re.fullmatch(freshness.APPLIED_PATTERN, "max-staleness=500ms")
    assert re.fullmatch(freshness.STALENESS_PATTERN, "100")
