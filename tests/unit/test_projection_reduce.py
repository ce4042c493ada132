"""Batch reduction: per entity, only the newest version of a batch is applied."""

from __future__ import annotations

import datetime as dt

from order_history.projection.statements import reduce_events
from shared.events import Event, GoodsData, GoodsDeletedData, OrderData, new_event

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def goods(gid: int, version: int, order_id: int) -> Event:
    return new_event(
        "goods.updated", gid, version, GoodsData(id=gid, order_id=order_id, name=None, created_at=NOW, updated_at=NOW)
    )


def test_newest_version_wins_whatever_the_arrival_order() -> None:
    events = [goods(1, 3, 30), goods(1, 1, 10), goods(1, 2, 20), goods(2, 1, 5)]
    batch = reduce_events(events)
    assert batch.goods[1].aggregate_version == 3
    assert batch.goods[2].aggregate_version == 1
    assert len(batch) == 2


def test_duplicates_collapse_and_orders_and_goods_stay_apart() -> None:
    order = new_event("order.created", 1, 1, OrderData(id=1, user_id=2, created_at=NOW, updated_at=NOW))
    deleted = new_event("goods.deleted", 1, 4, GoodsDeletedData(id=1, order_id=1))
    batch = reduce_events([order, order, goods(1, 3, 1), deleted, goods(1, 3, 1)])
    assert batch.orders == {1: order}
    assert batch.goods[1] is deleted


def test_only_goods_created_in_the_batch_are_marked_for_a_plain_insert_and_only_on_request() -> None:
    from order_history.projection.statements import prepare

    created = new_event("goods.created", 1, 1, GoodsData(id=1, order_id=7, name=None, created_at=NOW, updated_at=NOW))
    # goods 1: created, then updated in the same batch; goods 2: only an update (created earlier).
    batch = reduce_events([goods(1, 2, 7), created, goods(2, 5, 7)])
    assert batch.created_goods == {1}
    assert list(batch.goods) == [1, 2]
    assert prepare(batch, insert_created=True).created == "{true,false}"
    assert prepare(batch, insert_created=True).upserts_only().created == "{false,false}"
    assert prepare(batch).created == "{false,false}"  # the default is safe for a redelivery


def test_a_partition_stays_on_its_lane_while_its_messages_wait_and_new_ones_go_to_the_least_loaded() -> None:
    from aiokafka import TopicPartition

    from order_history.consumer.lanes import Lanes

    g0, g1, g2, o0 = TopicPartition("g", 0), TopicPartition("g", 1), TopicPartition("g", 2), TopicPartition("o", 0)
    lanes = Lanes(2)
    # largest first, each to the lane with the fewest messages waiting
    assert lanes.route({g0: 500, g1: 300, g2: 250, o0: 40}) == {0: [g0, o0], 1: [g1, g2]}
    assert lanes.waiting == [540, 550]
    # g0 still waits on lane 0: its next messages go there too, however loaded lane 0 is
    assert lanes.route({g0: 1000, g1: 10}) == {0: [g0], 1: [g1]}
    lanes.done({g1: 300, g2: 250})  # lane 1 applied its first part; g1 has 10 more waiting
    assert lanes.waiting == [1540, 10]
    lanes.done({g1: 10})
    lanes.done({g0: 500, o0: 40})  # lane 0 is done with its first part; g0 still has 1,000 waiting
    assert lanes.waiting == [1000, 0]
    # g1, g2 and o0 have nothing waiting: they may move, and go to the idle lane
    assert lanes.route({g2: 5, o0: 5, g0: 5}) == {0: [g0], 1: [g2, o0]}
    assert lanes.bound_to([0]) == {g0} and lanes.bound_to([1]) == {g2, o0}
    # with lane 1 full, a partition with nothing waiting goes to the open lane 0, however loaded
    assert lanes.route({g1: 7}, open_lanes=[0]) == {0: [g1]}
    lanes.done({g0: 1005})
    lanes.done({g2: 5, o0: 5})
    lanes.done({g1: 7})
    assert lanes.waiting == [0, 0] and not lanes.lane_of and not lanes.bound_to([0, 1])


def test_timestamps_become_microseconds_since_1970_in_utc_whatever_their_zone() -> None:
    from zoneinfo import ZoneInfo

    from pydantic import TypeAdapter

    from order_history.projection.statements import _micros_array

    parsed = TypeAdapter(dt.datetime).validate_json
    values: list[dt.datetime | None] = [
        None,
        dt.datetime(1, 1, 1),  # naive: taken as UTC
        dt.datetime(1, 1, 1, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=14))),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
        parsed('"2026-11-22T10:15:30.123456+02:00"'),
        parsed('"2026-11-22T10:15:30.000001Z"'),
        dt.datetime(2026, 7, 1, 12, tzinfo=ZoneInfo("Europe/Berlin")),  # summer time: +02:00
        dt.datetime(2026, 1, 1, 12, tzinfo=ZoneInfo("Europe/Berlin")),  # +01:00
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    expected = [
        None if v is None else ((v if v.tzinfo else v.replace(tzinfo=dt.UTC)) - epoch) // dt.timedelta(microseconds=1)
        for v in values
    ]
    assert _micros_array(values) == "{" + ",".join("null" if e is None else str(e) for e in expected) + "}"
