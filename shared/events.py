"""The event contract of SPEC.md: envelope, payloads, and a registry of schemas.

The registry is keyed by (event_type, schema_version). A consumer decodes raw
Kafka values with `decode_event`; anything that is not a valid event of a known
(type, version) raises `PoisonMessage` with a reason fit for a DLQ header.
Older schema versions are lifted to the current one by upcasters.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

MAX_ID: Final = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
MAX_NAME_LENGTH: Final = 200

# What the read side can store and show: PostgreSQL stores later years, but
# neither asyncpg nor Python can read a timestamptz after 9999-12-31 UTC back,
# so an event naming one would break every read of its order.
EARLIEST: Final = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
Timestamp = Annotated[dt.datetime, Field(ge=EARLIEST, le=LATEST)]

ORDER_TOPIC: Final = "order.events"
GOODS_TOPIC: Final = "goods.events"
TOPICS: Final = (ORDER_TOPIC, GOODS_TOPIC)

OrderEventType = Literal["order.created", "order.updated", "order.deleted"]
GoodsEventType = Literal["goods.created", "goods.updated", "goods.deleted"]
EventType = Literal[
    "order.created", "order.updated", "order.deleted", "goods.created", "goods.updated", "goods.deleted"
]


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OrderData(_Payload):
    id: Id
    user_id: Id
    created_at: Timestamp
    updated_at: Timestamp


class OrderDeletedData(_Payload):
    id: Id
    user_id: Id | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold the NUL character.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


# A goods name: at most MAX_NAME_LENGTH characters, no NUL (documented as a pattern too).
Text = (
    Annotated[
        str,
        Field(max_length=MAX_NAME_LENGTH),
        AfterValidator(_storable),
        WithJsonSchema({"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": "^[^\x00]*$"}),
    ]
    | None
)


class GoodsData(_Payload):
    id: Id
    order_id: Id
    name: Text
    created_at: Timestamp
    updated_at: Timestamp


class GoodsDeletedData(_Payload):
    id: Id
    order_id: Id
    name: Text = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


Payload = OrderData | OrderDeletedData | GoodsData | GoodsDeletedData

CURRENT_SCHEMA_VERSION: Final = 1

# (event_type, schema_version) -> payload model of that version.
REGISTRY: Final[dict[tuple[str, int], type[_Payload]]] = {
    ("order.created", 1): OrderData,
    ("order.updated", 1): OrderData,
    ("order.deleted", 1): OrderDeletedData,
    ("goods.created", 1): GoodsData,
    ("goods.updated", 1): GoodsData,
    ("goods.deleted", 1): GoodsDeletedData,
}

# (event_type, old_version) -> function lifting `data` of that version to old_version + 1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: Final[dict[tuple[str, int], Upcaster]] = {}

TOPIC_OF_TYPE: Final[dict[str, str]] = {
    "order.created": ORDER_TOPIC,
    "order.updated": ORDER_TOPIC,
    "order.deleted": ORDER_TOPIC,
    "goods.created": GOODS_TOPIC,
    "goods.updated": GOODS_TOPIC,
    "goods.deleted": GOODS_TOPIC,
}


class Envelope(BaseModel):
    """The wire form of every event."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: uuid.UUID
    event_type: EventType
    schema_version: int = Field(ge=1, strict=True)
    aggregate_id: Id
    aggregate_version: int = Field(ge=1, le=2**31 - 1, strict=True)
    occurred_at: Timestamp
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event: envelope fields plus the payload at the current schema version.

    A plain dataclass, not a pydantic model: it is built only from validated parts.
    """

    event_id: uuid.UUID
    event_type: EventType
    schema_version: int
    aggregate_id: int
    aggregate_version: int
    occurred_at: dt.datetime
    data: Payload

    @property
    def topic(self) -> str:
        return TOPIC_OF_TYPE[self.event_type]

    @property
    def key(self) -> bytes:
        return str(self.aggregate_id).encode()

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "event_id": str(self.event_id),
                "event_type": self.event_type,
                "schema_version": self.schema_version,
                "aggregate_id": self.aggregate_id,
                "aggregate_version": self.aggregate_version,
                "occurred_at": self.occurred_at.isoformat(),
                "data": self.data.model_dump(mode="json"),
            }
        )


def envelope_sql(
    event_type: EventType, aggregate_id: str, aggregate_version: str, data: dict[str, str], event_id: str
) -> str:
    """SQL that builds the same envelope as `Event.to_json`, as jsonb, from SQL expressions.

    For commands that write their entity and its outbox row in one statement:
    the arguments are SQL expressions over that statement's rows (`w.id`,
    `w.version + 1`, ...), never client input. `occurred_at` is the
    transaction's `now()`; timestamps are rendered by PostgreSQL as ISO 8601.
    """
    fields = ", ".join(f"'{name}', {expression}" for name, expression in data.items())
    return (
        f"jsonb_build_object('event_id', {event_id}, 'event_type', '{event_type}', "
        f"'schema_version', {CURRENT_SCHEMA_VERSION}, 'aggregate_id', {aggregate_id}, "
        f"'aggregate_version', {aggregate_version}, 'occurred_at', now(), "
        f"'data', jsonb_build_object({fields}))"
    )


def new_event(
    event_type: EventType,
    aggregate_id: int,
    aggregate_version: int,
    data: Payload,
    occurred_at: dt.datetime | None = None,
) -> Event:
    return Event(
        event_id=uuid.uuid4(),
        event_type=event_type,
        schema_version=CURRENT_SCHEMA_VERSION,
        aggregate_id=aggregate_id,
        aggregate_version=aggregate_version,
        occurred_at=occurred_at or dt.datetime.now(dt.UTC),
        data=data,
    )


class PoisonMessage(Exception):
    """A Kafka value that is not a valid event this consumer knows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(value)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


_PAYLOAD_TYPES = (OrderData, OrderDeletedData, GoodsData, GoodsDeletedData)


def _fast_schema(event_type: str, payload: type[_Payload]) -> cs.CoreSchema:
    """The wire form of one event type at the current schema version, validated straight into `Event`.

    The same constraints as `Envelope` plus the payload model (`extra` ignored),
    but `data` is validated by its model in the same pass and no intermediate
    object is built: pydantic-core fills the `Event` dataclass's slots itself.
    """
    envelope = Envelope.model_fields
    fields = [
        cs.dataclass_field("event_id", cs.uuid_schema()),
        cs.dataclass_field("event_type", cs.literal_schema([event_type])),
        cs.dataclass_field("schema_version", cs.int_schema(ge=1, strict=True)),
        cs.dataclass_field("aggregate_id", cs.int_schema(ge=1, le=MAX_ID, strict=True)),
        cs.dataclass_field("aggregate_version", cs.int_schema(ge=1, le=2**31 - 1, strict=True)),
        cs.dataclass_field("occurred_at", TypeAdapter(Timestamp).core_schema),
        cs.dataclass_field("data", payload.__pydantic_core_schema__),
    ]
    assert [f["name"] for f in fields] == list(Event.__dataclass_fields__) == list(envelope)
    args = cs.dataclass_args_schema("Event", fields, extra_behavior="ignore")
    return cs.dataclass_schema(Event, args, list(Event.__dataclass_fields__), slots=True, frozen=True)


# Payload models of the current schema version, as the fast validator was built for them.
_FAST_MODELS: Final[dict[str, type[_Payload]]] = {
    event_type: model for (event_type, version), model in REGISTRY.items() if version == CURRENT_SCHEMA_VERSION
}
# One pass over the raw bytes for every valid event of the current schema version:
# a union tagged by event_type of `_fast_schema`s.
_FAST: Final = SchemaValidator(
    cs.tagged_union_schema(
        {event_type: _fast_schema(event_type, model) for event_type, model in _FAST_MODELS.items()},
        discriminator="event_type",
    )
)


def decode_event(raw: bytes | None, topic: str | None = None) -> Event:
    """Decode a raw Kafka value; raise `PoisonMessage` with the reason if it is not a valid event.

    A valid event of the current schema version is decoded in one pass by `_FAST`.
    Anything else (an older version to upcast, or a value that fails validation)
    goes through `_decode_slow`, which applies the upcasters and names the precise
    reason; both accept and refuse exactly the same values.
    """
    if raw is not None:
        try:
            event: Event = _FAST.validate_json(raw)
        except ValidationError:
            pass
        else:
            if (
                event.schema_version == CURRENT_SCHEMA_VERSION
                and REGISTRY.get((event.event_type, event.schema_version)) is _FAST_MODELS[event.event_type]
            ):
                if topic is not None and TOPIC_OF_TYPE[event.event_type] != topic:
                    raise PoisonMessage(f"event_type {event.event_type} does not belong on topic {topic}")
                if event.data.id != event.aggregate_id:
                    raise PoisonMessage(f"data.id {event.data.id} differs from aggregate_id {event.aggregate_id}")
                return event
    return _decode_slow(raw, topic)


def _decode_slow(raw: bytes | None, topic: str | None = None) -> Event:
    if raw is None:
        raise PoisonMessage("empty value (tombstone)")
    try:
        env = Envelope.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise PoisonMessage(f"value is not valid JSON: {first['msg']}") from None
        if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
            raise PoisonMessage("value is not a JSON object") from None
        raise PoisonMessage(f"invalid envelope: {_describe(exc)}") from None
    if topic is not None and TOPIC_OF_TYPE[env.event_type] != topic:
        raise PoisonMessage(f"event_type {env.event_type} does not belong on topic {topic}")
    version = env.schema_version
    data = env.data
    if (env.event_type, version) not in REGISTRY:
        raise PoisonMessage(f"unknown schema_version {version} for event_type {env.event_type}")
    while version < CURRENT_SCHEMA_VERSION:
        upcaster = UPCASTERS.get((env.event_type, version))
        if upcaster is None:
            raise PoisonMessage(f"no upcaster from schema_version {version} of {env.event_type}")
        data = upcaster(data)
        version += 1
    model = REGISTRY[(env.event_type, version)]
    try:
        payload = model.model_validate(data)
    except ValidationError as exc:
        raise PoisonMessage(f"invalid data for {env.event_type} v{version}: {_describe(exc)}") from None
    assert isinstance(payload, _PAYLOAD_TYPES)
    if payload.id != env.aggregate_id:
        raise PoisonMessage(f"data.id {payload.id} differs from aggregate_id {env.aggregate_id}")
    return Event(
        event_id=env.event_id,
        event_type=env.event_type,
        schema_version=version,
        aggregate_id=env.aggregate_id,
        aggregate_version=env.aggregate_version,
        occurred_at=env.occurred_at,
        data=payload,
    )
