"""Where each row's last event was read (columns.SOURCE): declared once, carried by the batch, never compared;
and the entity a dead letter is about (dead_letters.subject)."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from order_history.ops.checks import CHECKS
from order_history.projection.columns import GOODS, ORDERS, SOURCE, Column, Entity
from order_history.projection.dead_letters import subject
from order_history.projection.snapshots import _RESYNC_GOODS, _RESYNC_ORDERS
from order_history.projection.statements import _APPLY, BATCH_PARAMS, prepare, reduce_events
from shared.events import Event, GoodsData, GoodsResyncedData, OrderData, new_event

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def goods(gid: int, version: int, order_id: int = 1, kind: str = "goods.updated") -> Event:
    data = GoodsData(id=gid, order_id=order_id, name=None, created_at=NOW, updated_at=NOW)
    return new_event(kind, gid, version, data)


def order(oid: int, version: int) -> Event:
    return new_event("order.updated", oid, version, OrderData(id=oid, user_id=2, created_at=NOW, updated_at=NOW))


def _param(prepared_columns: tuple[str, ...], name: str) -> str:
    return prepared_columns[BATCH_PARAMS.index(name)]


def test_the_source_columns_are_declared_once_for_both_entities_and_never_compared() -> None:
    for entity in (ORDERS, GOODS):
        assert entity.record == ("source_partition", "source_offset")
        assert entity.names[-2:] == entity.record and not set(entity.record) & set(entity.payload)
        for name in entity.record:
            assert entity.param(name) in BATCH_PARAMS
    assert all(not set(check.fields) & {c.name for c in SOURCE} for check in CHECKS)
    for sql in (_APPLY, _RESYNC_GOODS, _RESYNC_ORDERS):
        assert "source_partition" in sql and "source_offset" in sql


def test_an_entity_refuses_record_columns_out_of_place_or_compared() -> None:
    user = Column("user_id", "bigint", "int", "take")
    with pytest.raises(ValueError, match="then the record's"):
        Entity("order", "orders", "o", (*SOURCE, user))
    with pytest.raises(ValueError, match="then the record's"):
        Entity("order", "orders", "o", (user,))
    compared = Column("source_offset", "bigint", "int", "take", compared=True, origin="offset")
    with pytest.raises(ValueError, match="not compared"):
        Entity("order", "orders", "o", (user, SOURCE[0], compared))


def test_each_row_takes_the_position_of_the_event_that_wins_it() -> None:
    created = goods(1, 1, kind="goods.created")
    events = [created, goods(1, 3), goods(1, 2), goods(1, 3), order(5, 1), goods(2, 1)]
    sources = [(0, 10), (0, 11), (0, 12), (0, 13), (2, 40), (1, 7)]
    batch = reduce_events(events, sources)
    # goods 1: version 3 first read at offset 11 (the copy at 13 changes nothing).
    assert batch.goods_sources == {1: (0, 11), 2: (1, 7)} and batch.order_sources == {5: (2, 40)}
    prepared = prepare(batch, insert_created=True).columns
    assert _param(prepared, "g_source_partition") == "{0,1}"
    assert _param(prepared, "g_source_offset") == "{11,7}"
    assert _param(prepared, "o_source_partition") == "{2}" and _param(prepared, "o_source_offset") == "{40}"


def test_a_snapshot_that_wins_a_tie_brings_its_own_position_and_no_sources_mean_null() -> None:
    data = GoodsResyncedData(id=1, order_id=1, name="x", created_at=NOW, updated_at=NOW)
    snapshot = new_event("goods.resynced", 1, 3, data)
    batch = reduce_events([goods(1, 3), snapshot], [(0, 5), (0, 9)])
    assert batch.resynced_goods == {1: snapshot} and batch.goods_sources == {1: (0, 9)}
    unknown = reduce_events([goods(1, 3), order(5, 1)])
    assert unknown.goods_sources == {} and unknown.order_sources == {}
    prepared = prepare(unknown).columns
    assert _param(prepared, "g_source_offset") == "{null}" and _param(prepared, "o_source_partition") == "{null}"
    with pytest.raises(ValueError):
        reduce_events([goods(1, 3)], [])  # a source for each event, or none


@pytest.mark.parametrize(
    ("topic", "key", "value", "expected"),
    [
        ("p-order.events", b"42", None, (42, 42)),
        ("order.events", b"x", orjson.dumps({"aggregate_id": 42}), (42, 42)),
        ("p-goods.events", b"7", orjson.dumps({"aggregate_id": 7, "data": {"order_id": 42}}), (7, 42)),
        ("goods.events", None, orjson.dumps({"aggregate_id": 7, "data": {"order_id": True}}), (7, None)),
        ("goods.events", b"7", b"\xff\xfe not json", (7, None)),
        ("goods.events", b"-7", orjson.dumps([1]), (None, None)),
        ("goods.events", b"9" * 19, orjson.dumps({"aggregate_id": 2**63}), (None, None)),
        ("goods.events", None, None, (None, None)),
        ("elsewhere", b"5", orjson.dumps({"data": {"order_id": 1}}), (5, None)),
    ],
)
def test_a_dead_letter_names_the_entity_and_order_it_is_about_when_the_record_says(
    topic: str, key: bytes | None, value: bytes | None, expected: tuple[int | None, int | None]
) -> None:
    assert subject(topic, key, value) == expected
