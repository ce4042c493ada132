"""The consumer's pure decisions: which lane applies a partition, and what a lane does after an error."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import TopicPartition

from order_history.consumer.lanes import Lanes
from order_history.projection.apply import Decision, decide

A, B, C, D = (TopicPartition("order.events", p) for p in range(4))


def test_partitions_spread_over_the_least_loaded_lanes_biggest_first() -> None:
    lanes = Lanes(2)
    routed = lanes.route({A: 10, B: 30, C: 5})
    # B (30) takes lane 0, A (10) the empty lane 1, C (5) the lighter lane 1.
    assert routed == {0: [B], 1: [A, C]}
    assert lanes.waiting == [30, 15]


def test_a_partition_keeps_its_lane_while_messages_wait_there() -> None:
    lanes = Lanes(2)
    lanes.route({A: 10})
    lanes.route({B: 1})
    # Lane 1 is now the lighter one, but A still has messages waiting on lane 0.
    assert lanes.route({A: 50}) == {0: [A]}
    assert lanes.waiting == [60, 1]
    lanes.done({A: 10})
    assert lanes.lane_of[A] == 0  # 50 still waiting
    lanes.done({A: 50})
    assert A not in lanes.lane_of
    # Free again: it goes to the lightest lane now.
    lanes.route({B: 5})
    assert lanes.route({A: 1}) == {0: [A]}


def test_new_partitions_go_only_to_open_lanes_but_bound_ones_stay() -> None:
    lanes = Lanes(3)
    lanes.route({A: 1}, open_lanes=[2])
    assert lanes.lane_of[A] == 2
    routed = lanes.route({A: 1, B: 1, C: 1}, open_lanes=[0])
    assert routed == {2: [A], 0: [B, C]}
    assert lanes.bound_to([2]) == {A}
    assert lanes.bound_to([0, 1]) == {B, C}


def test_done_releases_exactly_what_was_routed() -> None:
    lanes = Lanes(2)
    lanes.route({A: 3, D: 2})
    lanes.done({A: 3, D: 2})
    assert lanes.lane_of == {}
    assert lanes.waiting == [0, 0]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.DataError("value out of range"),
        asyncpg.CheckViolationError("violates check"),
        asyncpg.UniqueViolationError("duplicate key"),
    ],
)
def test_data_the_database_refuses_is_isolated_at_once(error: BaseException) -> None:
    assert decide(error, attempt=1) is Decision.ISOLATE
    assert decide(error, attempt=10) is Decision.ISOLATE


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), asyncpg.CannotConnectNowError("starting up")])
def test_an_outage_is_retried_then_given_up_never_skipped(error: BaseException) -> None:
    assert decide(error, attempt=1) is Decision.RETRY
    assert decide(error, attempt=2) is Decision.RETRY
    assert decide(error, attempt=3) is Decision.GIVE_UP
    assert decide(error, attempt=1, attempts_before_giving_up=1) is Decision.GIVE_UP
