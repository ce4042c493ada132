"""`CATALOGUE`, the one table of event types: each type's topic, entity, change and payload model per
schema version, with the upcasters that lift an older version's payload to the next.

The topic list, the topic of each type and the types' JSON Schema enum are
derived from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import AfterValidator, Field, WithJsonSchema

from shared.events.payloads import (
    GoodsData,
    GoodsDeletedData,
    GoodsResyncedData,
    OrderData,
    OrderDeletedData,
    OrderResyncedData,
    _Payload,
)

ORDER_TOPIC: Final = "order.events"
GOODS_TOPIC: Final = "goods.events"

# An event type: a key of CATALOGUE (checked where events are decoded or built).
EventType: TypeAlias = str


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


# Lifts the `data` of one schema version to the next.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
Change = Literal["created", "updated", "deleted", "resynced"]


@dataclass(frozen=True)
class EventKind:
    """One row of the catalogue: where an event type goes and what it carries."""

    topic: str
    entity: str  # the aggregate and the view the event updates: "order" or "goods"
    change: Change
    models: Mapping[int, type[_Payload]]  # schema_version -> payload model of that version
    upcasters: Mapping[int, Upcaster] = field(default_factory=dict)  # old version -> its lift to version + 1

    @property
    def current(self) -> int:
        """The schema version producers write and decoding lifts older versions to: the newest."""
        return max(self.models)


def _add_price(data: dict[str, Any]) -> dict[str, Any]:
    """goods.* schema_version 1 -> 2: version 2 added `price_cents`; a version 1 event had none."""
    return {**data, "price_cents": None}


def _goods_v2(model: type[_Payload]) -> tuple[dict[int, type[_Payload]], dict[int, Upcaster]]:
    """The models and upcasters of a goods event type at schema_version 2. A version 1 event is
    lifted by `_add_price`, then validated by the version 2 model, as every older version is."""
    return {1: model, 2: model}, {1: _add_price}


CATALOGUE: Final[Mapping[EventType, EventKind]] = {
    "order.created": EventKind(ORDER_TOPIC, "order", "created", {1: OrderData}),
    "order.updated": EventKind(ORDER_TOPIC, "order", "updated", {1: OrderData}),
    "order.deleted": EventKind(ORDER_TOPIC, "order", "deleted", {1: OrderDeletedData}),
    "goods.created": EventKind(GOODS_TOPIC, "goods", "created", *_goods_v2(GoodsData)),
    "goods.updated": EventKind(GOODS_TOPIC, "goods", "updated", *_goods_v2(GoodsData)),
    "goods.deleted": EventKind(GOODS_TOPIC, "goods", "deleted", *_goods_v2(GoodsDeletedData)),
    "order.resynced": EventKind(ORDER_TOPIC, "order", "resynced", {1: OrderResyncedData}),
    "goods.resynced": EventKind(GOODS_TOPIC, "goods", "resynced", *_goods_v2(GoodsResyncedData)),
}

# Derived from CATALOGUE.
TOPICS: Final = tuple(dict.fromkeys(kind.topic for kind in CATALOGUE.values()))
TOPIC_OF_TYPE: Final = {event_type: kind.topic for event_type, kind in CATALOGUE.items()}


def _known_type(value: str) -> str:
    if value not in CATALOGUE:
        raise ValueError(f"unknown event_type {value[:100]!r}")
    return value


KnownType = Annotated[str, Field(strict=True), AfterValidator(_known_type), WithJsonSchema({"enum": list(CATALOGUE)})]
