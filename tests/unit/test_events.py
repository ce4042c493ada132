"""The shared event contract: encode, decode, and every way a value can be poison."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest

from shared.events import (
    GoodsData,
    OrderData,
    PoisonMessage,
    decode_event,
    new_event,
)

NOW = dt.datetime(2026, 11, 22, 10, 15, tzinfo=dt.UTC)


def order_event(**overrides: Any) -> dict[str, Any]:
    event = new_event("order.created", 7, 1, OrderData(id=7, user_id=3, created_at=NOW, updated_at=NOW))
    raw: dict[str, Any] = orjson.loads(event.to_json())
    raw.update(overrides)
    return raw


def test_round_trip_keeps_every_field() -> None:
    event = new_event("goods.updated", 42, 3, GoodsData(id=42, order_id=7, name="lamp", created_at=NOW, updated_at=NOW))
    raw = orjson.loads(event.to_json())
    assert set(raw) == {
        "event_id",
        "event_type",
        "schema_version",
        "aggregate_id",
        "aggregate_version",
        "occurred_at",
        "data",
    }
    assert raw["data"] == {
        "id": 42,
        "order_id": 7,
        "name": "lamp",
        "price_cents": None,
        "created_at": "2026-11-22T10:15:00Z",
        "updated_at": "2026-11-22T10:15:00Z",
    }
    decoded = decode_event(event.to_json(), "goods.events")
    assert decoded == event
    assert decoded.key == b"42"
    assert dt.datetime.fromisoformat(raw["occurred_at"]).tzinfo is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (None, "empty value"),
        (orjson.dumps(order_event(event_type="order.exploded")), "event_type"),
        (orjson.dumps(order_event(schema_version=2)), "unknown schema_version 2"),
        (orjson.dumps(order_event(event_id="nope")), "event_id"),
        (orjson.dumps(order_event(aggregate_version=0)), "aggregate_version"),
        (orjson.dumps(order_event(aggregate_id=8)), "differs from aggregate_id"),
        (orjson.dumps(order_event(data={"id": 7, "user_id": "three"})), "data"),
        (orjson.dumps(order_event(data={"id": 7})), "user_id"),
        # RFC 3339 needs the offset: a naive timestamp names no instant.
        (orjson.dumps(order_event(occurred_at="2026-01-01T00:00:00")), "occurred_at: Input should have timezone"),
    ],
)
def test_poison_messages_name_their_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(PoisonMessage) as info:
        decode_event(raw, "order.events")
    assert reason in info.value.reason


def test_event_on_the_wrong_topic_is_poison() -> None:
    with pytest.raises(PoisonMessage, match=r"does not belong on topic goods\.events"):
        decode_event(orjson.dumps(order_event()), "goods.events")


def test_goods_deleted_needs_its_last_order_id() -> None:
    raw = {
        "event_id": str(uuid.uuid4()),
        "event_type": "goods.deleted",
        "schema_version": 1,
        "aggregate_id": 5,
        "aggregate_version": 2,
        "occurred_at": NOW.isoformat(),
        "data": {"id": 5},
    }
    with pytest.raises(PoisonMessage, match="order_id"):
        decode_event(orjson.dumps(raw), "goods.events")
    raw["data"] = {"id": 5, "order_id": 9}
    assert decode_event(orjson.dumps(raw), "goods.events").data.id == 5


def test_upcasters_lift_old_versions() -> None:
    """An old schema version with an upcaster is lifted; without one it is poison."""
    from shared import events

    # A next catalogue: order.created v2 is current, and v1 spelled the user id "userId".
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        out["user_id"] = out.pop("userId")
        return out

    created = events.CATALOGUE["order.created"]
    two = {1: events.OrderData, 2: events.OrderData}
    no_upcaster = events.Codec({**events.CATALOGUE, "order.created": replace(created, models=two)})
    lifted = events.Codec({**events.CATALOGUE, "order.created": replace(created, models=two, upcasters={1: v1_to_v2})})
    data = {"id": 7, "userId": 3, "created_at": NOW.isoformat(), "updated_at": NOW.isoformat()}
    raw = order_event(schema_version=1, data=data)
    with pytest.raises(PoisonMessage, match="no upcaster"):
        no_upcaster.decode(orjson.dumps(raw), "order.events")
    decoded = lifted.decode(orjson.dumps(raw), "order.events")
    assert decoded.schema_version == 2
    assert isinstance(decoded.data, OrderData) and decoded.data.user_id == 3
    # The services' codec knows v1 only: the same event at v2 is poison there, and fine for the next one.
    newer = order_event(schema_version=2, data={**data, "user_id": 3})
    with pytest.raises(PoisonMessage, match="unknown schema_version 2"):
        decode_event(orjson.dumps(newer), "order.events")
    assert lifted.decode(orjson.dumps(newer), "order.events").schema_version == 2
