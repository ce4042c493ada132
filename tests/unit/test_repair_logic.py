"""The pure parts of the repair tools: snapshot reduction, reconcile's comparison, the commands' arguments."""

from __future__ import annotations

import datetime as dt

import pytest

from order_history.dlq import DlqError, Origin
from order_history.projections import reduce_events
from order_history.reconcile import CHECKS, Difference, differences
from shared.events import Event, GoodsResyncedData, OrderResyncedData, new_event
from shared.resync import parse_ids, parse_since
from tests.readmodel import T0, goods_event, order_created


def _snapshot(gid: int, version: int, name: str) -> Event:
    data = GoodsResyncedData(id=gid, order_id=1, name=name, created_at=T0, updated_at=T0)
    return new_event("goods.resynced", gid, version, data)


def _name(event: Event) -> str | None:
    assert isinstance(event.data, GoodsResyncedData)
    return event.data.name


def test_a_snapshot_wins_its_own_version_and_loses_to_a_newer_one() -> None:
    tie = reduce_events([goods_event(1, 2, 1, "event"), _snapshot(1, 2, "snapshot")])
    assert not tie.goods and _name(tie.resynced_goods[1]) == "snapshot"
    tie = reduce_events([_snapshot(1, 2, "snapshot"), goods_event(1, 2, 1, "event")])
    assert _name(tie.resynced_goods[1]) == "snapshot"
    newer = reduce_events([_snapshot(1, 2, "snapshot"), goods_event(1, 3, 1, "event")])
    assert not newer.has_resynced and newer.goods[1].aggregate_version == 3
    plain = reduce_events([order_created(1, 1), goods_event(1, 1, 1)])
    assert not plain.has_resynced and len(plain) == 2


def test_a_snapshot_of_an_existing_entity_carries_its_whole_state() -> None:
    with pytest.raises(ValueError, match="needs user_id"):
        OrderResyncedData(id=1, created_at=T0, updated_at=T0)
    assert not OrderResyncedData(id=1, exists=False).exists
    with pytest.raises(ValueError, match="needs order_id"):
        GoodsResyncedData(id=1, created_at=T0, updated_at=T0)


def test_reconcile_names_each_differing_field() -> None:
    orders, goods, counts = CHECKS
    assert differences(orders, {1: (7,), 2: (8,)}, {1: (7,), 2: (9,), 3: (4,)}) == [
        Difference("order", 2, "user_id", "8", "9"),
        Difference("order", 3, "exists", "no", "yes"),
    ]
    assert differences(goods, {5: (1, None)}, {}) == [Difference("goods", 5, "exists", "yes", "no")]
    assert differences(goods, {5: (1, None)}, {5: (1, "")}) == [Difference("goods", 5, "name", "-", "")]
    # A count missing on one side is 0 there, not a missing entity.
    assert differences(counts, {9: (2,)}, {}) == [Difference("order", 9, "goods_count", "2", "0")]
    assert differences(counts, {9: (2,)}, {9: (2,)}) == []


def test_command_arguments_are_checked() -> None:
    assert parse_ids(["1,2", " 3 ", "2"]) == [1, 2, 3, 2]
    for bad in (["x"], ["0"], ["-1"], [","], [str(2**63)]):
        with pytest.raises(ValueError, match="id"):
            parse_ids(bad)
    assert parse_since("2026-12-01T10:00:00+01:00") == dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="zone"):
        parse_since("2026-12-01T10:00:00")
    assert Origin.parse("pre-goods.events:2:17") == Origin("pre-goods.events", 2, 17)
    assert str(Origin("goods.events", 0, 5)) == "goods.events:0:5"
    for text in ("goods.events", "goods.events:1", ":1:2", "goods.events:x:2"):
        with pytest.raises(DlqError):
            Origin.parse(text)
