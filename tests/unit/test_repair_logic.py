"""The pure parts of the repair tools: snapshot reduction, reconcile's comparison, the commands' arguments."""

from __future__ import annotations

import datetime as dt

import pytest

from order_history.ops.checks import CHECKS, Difference, differences
from order_history.ops.dlq import DlqError, Origin
from order_history.ops.repair import Request, out_of_reach, requests
from order_history.projection.statements import reduce_events
from shared.command.resync import Outcome, parse_ids, parse_removal_version, parse_since
from shared.events import MAX_VERSION, Event, GoodsResyncedData, OrderResyncedData, new_event
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
    assert goods.fields == ("order_id", "name", "price_cents")
    assert differences(goods, {5: (1, None, 9)}, {}) == [Difference("goods", 5, "exists", "yes", "no")]
    assert differences(goods, {5: (1, None, 9)}, {5: (1, "", 9)}) == [Difference("goods", 5, "name", "-", "")]
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


def _extra(entity: str, entity_id: int) -> Difference:
    return Difference(entity, entity_id, "exists", "no", "yes")


def test_the_repair_removes_extra_rows_at_the_highest_version_the_read_model_holds() -> None:
    found = [
        _extra("order", 7),
        _extra("order", 9),
        Difference("order", 2, "goods_count", "1", "2"),  # the command side has order 2: a plain resync
        Difference("goods", 4, "exists", "yes", "no"),  # missing from the read model: a plain resync
        _extra("goods", 5),
    ]
    versions = {"order": {7: 2, 9: 5, 2: 1}, "goods": {5: 1}}
    assert requests(found, versions) == [
        Request("order", (2,)),
        Request("order", (7, 9), 5),
        Request("goods", (4,)),
        Request("goods", (5,), 1),
    ]
    # An id that is both an extra row and named by a count goes once, with the extras.
    both = [_extra("order", 7), Difference("order", 7, "goods_count", "0", "3")]
    assert requests(both, {"order": {7: 3}}) == [Request("order", (7,), 3)]
    # A row at the highest version there is cannot be a floor: no version is left for the entity
    # created later. It goes without --remove-unassigned (deleted if its id was handed out, else left).
    assert requests([_extra("goods", 5), _extra("goods", 6)], {"goods": {5: MAX_VERSION, 6: 2}}) == [
        Request("goods", (5,)),
        Request("goods", (6,), 2),
    ]
    # A row gone from the read model meanwhile (no version): still at least version 1.
    assert requests([_extra("order", 3)], {}) == [Request("order", (3,), 1)]
    assert requests([], {}) == []


def test_a_request_is_the_command_an_operator_would_run() -> None:
    argv = Request("goods", (5, 6), 4).argv()
    assert argv[1:] == ["-m", "goods", "resync", "--json", "--ids", "5,6", "--remove-unassigned", "4"]
    assert "--remove-unassigned" not in Request("order", (1,)).argv()


def test_the_repair_stops_waiting_for_a_snapshot_that_cannot_apply() -> None:
    published = {1: 3, 2: 3, 3: 3, 4: MAX_VERSION}
    read = {1: 3, 2: 5, 3: 5, 4: MAX_VERSION}
    command = {3: 6}
    # 1: the snapshot applies over its own version. 2: the read model is newer than the snapshot
    # and than the command side. 3: newer than the snapshot, but the command side has a newer
    # version still on its way. 4: a deletion for good applies over anything.
    assert out_of_reach(published, read, command) == {2}
    assert out_of_reach({}, read, command) == set()


def test_resync_reports_each_snapshot_it_published() -> None:
    outcome = Outcome(published=1, gone=1, removed=1, never_created=[9], snapshots={8: 2, 3: MAX_VERSION, 5: 4})
    assert outcome.as_dict() == {
        "resynced": 1,
        "deleted": 1,
        "removed": 1,
        "never_created": [9],
        "snapshots": {"3": MAX_VERSION, "5": 4, "8": 2},
    }
    assert parse_removal_version("7") == 7
    assert parse_removal_version(str(MAX_VERSION - 1)) == MAX_VERSION - 1
    for bad in ("0", "-1", "x", "", str(MAX_VERSION)):
        with pytest.raises(ValueError, match="--remove-unassigned"):
            parse_removal_version(bad)
