"""Batch reduction: per entity, only the newest version of a batch is applied."""

from __future__ import annotations

import datetime as dt

from order_history.projections import reduce_events
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
    from order_history.projections import prepare

    created = new_event("goods.created", 1, 1, GoodsData(id=1, order_id=7, name=None, created_at=NOW, updated_at=NOW))
    # goods 1: created, then updated in the same batch; goods 2: only an update (created earlier).
    batch = reduce_events([goods(1, 2, 7), created, goods(2, 5, 7)])
    assert batch.created_goods == {1}
    assert list(batch.goods) == [1, 2]
    assert prepare(batch, insert_created=True).created == "{true,false}"
    assert prepare(batch, insert_created=True).upserts_only().created == "{false,false}"
    assert prepare(batch).created == "{false,false}"  # the default is safe for a redelivery


def test_partitions_are_split_into_groups_of_about_equal_size() -> None:
    from aiokafka import TopicPartition

    from order_history.consumer import split_partitions

    g0, g1, g2, o0 = TopicPartition("g", 0), TopicPartition("g", 1), TopicPartition("g", 2), TopicPartition("o", 0)
    sizes = {g0: 500, g1: 300, g2: 250, o0: 40}
    groups = split_partitions(sizes, 2)
    assert sorted(tp for g in groups for tp in g) == sorted(sizes)  # every partition once
    assert sorted(sum(sizes[tp] for tp in g) for g in groups) == [540, 550]  # 500 + 40 and 300 + 250
    assert split_partitions({g0: 10}, 2) == [[g0]]  # no empty group
