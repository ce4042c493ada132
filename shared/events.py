"""The event contract: the envelope, the payloads, and `CATALOGUE`, the one table of event types.

`CATALOGUE` maps each event type to its topic, its entity, the change it makes
and its payload model per schema version; the topic list, the topic of each
type, the decoders and the SQL that builds envelopes in the outbox are derived
from it and from the `Event` dataclass (the envelope's one statement). A
consumer decodes raw Kafka values with `decode_event`; anything that is not a
valid event of a known (type, version) raises `PoisonMessage` with a reason fit
for a DLQ header. Older schema versions are lifted to the current one by the
upcasters of their catalogue row. `docs/architecture.md` lists the steps to add
a field or an event type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeAlias

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

MAX_ID: Final = 2**63 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]
MAX_NAME_LENGTH: Final = 200

# What the read side can store and show: PostgreSQL stores later years, but
# neither asyncpg nor Python can read a timestamptz after 9999-12-31 UTC back,
# so an event naming one would break every read of its order. A timestamp
# without a UTC offset names no instant (and cannot be compared with one that
# has it): refused, as RFC 3339 requires the offset.
EARLIEST: Final = dt.datetime(1, 1, 1, tzinfo=dt.UTC)
LATEST: Final = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
Timestamp = Annotated[AwareDatetime, Field(ge=EARLIEST, le=LATEST)]

ORDER_TOPIC: Final = "order.events"
GOODS_TOPIC: Final = "goods.events"

# An event type: a key of CATALOGUE (checked where events are decoded or built).
EventType: TypeAlias = str


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


class _Resynced(_Payload):
    """A snapshot re-published by `resync`: the entity's current state in its command service.

    `exists` false: the service has no such entity, and the state fields are
    absent. At GONE_VERSION for an id it deleted (ids are never handed out
    twice); at a lower version for an id its sequence has not handed out yet,
    where the entity it creates later starts above that version (shared/resync.py).
    The consumer applies a snapshot also over a read row that claims the same
    version (a repair, not a duplicate), never over a newer one (README, "Events").
    """

    exists: bool = True

    @model_validator(mode="after")
    def _whole_state_when_it_exists(self) -> _Resynced:
        if self.exists:
            missing = [name for name in self._state_fields() if getattr(self, name) is None]
            if missing:
                raise ValueError(f"an existing entity's snapshot needs {', '.join(missing)}")
        return self

    def _state_fields(self) -> tuple[str, ...]:
        return ("created_at", "updated_at")


def _required_when_exists(*names: str) -> ConfigDict:
    """The JSON Schema of `_whole_state_when_it_exists` (for the AsyncAPI document)."""
    present: JsonDict = {name: {"not": {"type": "null"}} for name in names}
    rule: JsonDict = {
        "if": {"properties": {"exists": {"const": True}}},
        "then": {"required": list(names), "properties": present},
    }
    return ConfigDict(json_schema_extra=rule)


class OrderResyncedData(_Resynced):
    model_config = _required_when_exists("user_id", "created_at", "updated_at")

    id: Id
    user_id: Id | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None

    def _state_fields(self) -> tuple[str, ...]:
        return ("user_id", "created_at", "updated_at")


class GoodsResyncedData(_Resynced):
    model_config = _required_when_exists("order_id", "created_at", "updated_at")

    id: Id
    order_id: Id | None = None
    name: Text = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None

    def _state_fields(self) -> tuple[str, ...]:
        return ("order_id", "created_at", "updated_at")


Payload = OrderData | OrderDeletedData | GoodsData | GoodsDeletedData | OrderResyncedData | GoodsResyncedData

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


CATALOGUE: Final[Mapping[EventType, EventKind]] = {
    "order.created": EventKind(ORDER_TOPIC, "order", "created", {1: OrderData}),
    "order.updated": EventKind(ORDER_TOPIC, "order", "updated", {1: OrderData}),
    "order.deleted": EventKind(ORDER_TOPIC, "order", "deleted", {1: OrderDeletedData}),
    "goods.created": EventKind(GOODS_TOPIC, "goods", "created", {1: GoodsData}),
    "goods.updated": EventKind(GOODS_TOPIC, "goods", "updated", {1: GoodsData}),
    "goods.deleted": EventKind(GOODS_TOPIC, "goods", "deleted", {1: GoodsDeletedData}),
    "order.resynced": EventKind(ORDER_TOPIC, "order", "resynced", {1: OrderResyncedData}),
    "goods.resynced": EventKind(GOODS_TOPIC, "goods", "resynced", {1: GoodsResyncedData}),
}

# Derived from CATALOGUE.
TOPICS: Final = tuple(dict.fromkeys(kind.topic for kind in CATALOGUE.values()))
TOPIC_OF_TYPE: Final = {event_type: kind.topic for event_type, kind in CATALOGUE.items()}


def _known_type(value: str) -> str:
    if value not in CATALOGUE:
        raise ValueError(f"unknown event_type {value[:100]!r}")
    return value


KnownType = Annotated[str, Field(strict=True), AfterValidator(_known_type), WithJsonSchema({"enum": list(CATALOGUE)})]
SchemaVersion = Annotated[int, Field(ge=1, strict=True)]
MAX_VERSION: Final = 2**31 - 1
AggregateVersion = Annotated[int, Field(ge=1, le=MAX_VERSION, strict=True)]
# The aggregate_version of a snapshot saying "no such entity" of an id its service
# deleted: deleted for good, so no later event of it can exist, and no late one may
# resurrect it. (An id the service has not handed out yet is removed at a lower
# version: shared/resync.py.)
GONE_VERSION: Final = MAX_VERSION


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event: the envelope (the one statement of its fields) with the payload at the current version.

    A plain dataclass, not a pydantic model: it is built only from validated
    parts. The wire form has exactly these fields; the decoders' schemas and
    `envelope_sql` are derived from them.
    """

    event_id: uuid.UUID
    event_type: KnownType
    schema_version: SchemaVersion
    aggregate_id: Id
    aggregate_version: AggregateVersion
    occurred_at: Timestamp
    data: Payload

    @property
    def topic(self) -> str:
        return TOPIC_OF_TYPE[self.event_type]

    @property
    def key(self) -> bytes:
        return str(self.aggregate_id).encode()

    def to_json(self) -> bytes:
        envelope: dict[str, Any] = {name: getattr(self, name) for name in ENVELOPE_FIELDS}
        envelope["data"] = self.data.model_dump(mode="json")
        return orjson.dumps(envelope)  # UUIDs and datetimes as RFC 4122 / RFC 3339 text


ENVELOPE_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Event))
# Each envelope field's type with its constraints, as pydantic validates it.
FIELD_TYPES: Final = typing.get_type_hints(Event, include_extras=True)


def envelope_sql(
    event_type: EventType, aggregate_id: str, aggregate_version: str, data: dict[str, str], event_id: str
) -> str:
    """SQL that builds the same envelope as `Event.to_json`, as jsonb, from SQL expressions.

    For commands that write their entity and its outbox row in one statement:
    the arguments are SQL expressions over that statement's rows (`w.id`,
    `w.version + 1`, ...), never client input. `occurred_at` is the
    transaction's `now()`; timestamps are rendered by PostgreSQL as ISO 8601.
    """
    _known_type(event_type)
    payload = ", ".join(f"'{name}', {expression}" for name, expression in data.items())
    expressions = {
        "event_id": event_id,
        "event_type": f"'{event_type}'",
        "schema_version": str(CATALOGUE[event_type].current),
        "aggregate_id": aggregate_id,
        "aggregate_version": aggregate_version,
        "occurred_at": "now()",
        "data": f"jsonb_build_object({payload})",
    }
    pairs = ", ".join(f"'{name}', {expressions[name]}" for name in ENVELOPE_FIELDS)
    return f"jsonb_build_object({pairs})"


def new_event(
    event_type: EventType,
    aggregate_id: int,
    aggregate_version: int,
    data: Payload,
    occurred_at: dt.datetime | None = None,
) -> Event:
    _known_type(event_type)
    return Event(
        event_id=uuid.uuid4(),
        event_type=event_type,
        schema_version=CATALOGUE[event_type].current,
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


_PAYLOAD_TYPES = (OrderData, OrderDeletedData, GoodsData, GoodsDeletedData, OrderResyncedData, GoodsResyncedData)


def _field_schema(name: str) -> cs.CoreSchema:
    return TypeAdapter(FIELD_TYPES[name]).core_schema


def _fast_schema(event_type: str, payload: type[_Payload]) -> cs.CoreSchema:
    """The wire form of one event type at the current schema version, validated straight into `Event`.

    The envelope's constraints with `event_type` fixed and `data` validated by
    its model in the same pass, and no intermediate object built: pydantic-core
    fills the `Event` dataclass's slots itself (`extra` ignored).
    """
    special = {"event_type": cs.literal_schema([event_type]), "data": payload.__pydantic_core_schema__}
    fields = [cs.dataclass_field(name, special.get(name) or _field_schema(name)) for name in ENVELOPE_FIELDS]
    args = cs.dataclass_args_schema("Event", fields, extra_behavior="ignore")
    return cs.dataclass_schema(Event, args, list(ENVELOPE_FIELDS), slots=True, frozen=True)


# The envelope with `data` as any JSON object, for values the fast pass refuses
# (an older version to upcast, or a value to name the reason of).
_ENVELOPE: Final = SchemaValidator(
    cs.typed_dict_schema(
        {
            name: cs.typed_dict_field(
                cs.dict_schema(cs.str_schema(), cs.any_schema()) if name == "data" else _field_schema(name)
            )
            for name in ENVELOPE_FIELDS
        },
        extra_behavior="ignore",
    )
)


class Codec:
    """Decoding by one catalogue: its payload models per version, upcasters, and each type's current version.

    The services decode with `CODEC` (this module's CATALOGUE). A catalogue that
    knows more versions (the next deployment's) is another Codec: `dlq replay`
    takes one, and the tests use that to replay what an older consumer refused.
    """

    def __init__(self, catalogue: Mapping[EventType, EventKind]) -> None:
        self.topic_of_type = {event_type: kind.topic for event_type, kind in catalogue.items()}
        self.registry = {(t, version): model for t, kind in catalogue.items() for version, model in kind.models.items()}
        self.upcasters = {(t, version): up for t, kind in catalogue.items() for version, up in kind.upcasters.items()}
        self.current = {event_type: kind.current for event_type, kind in catalogue.items()}
        # Payload models of the current versions, as the fast validator is built for them.
        self.fast_models = {event_type: kind.models[kind.current] for event_type, kind in catalogue.items()}
        # One pass over the raw bytes for every valid event of a current schema version:
        # a union tagged by event_type of `_fast_schema`s.
        self.fast = SchemaValidator(
            cs.tagged_union_schema(
                {event_type: _fast_schema(event_type, model) for event_type, model in self.fast_models.items()},
                discriminator="event_type",
            )
        )

    def decode(self, raw: bytes | None, topic: str | None = None) -> Event:
        """Decode a raw Kafka value; raise `PoisonMessage` with the reason if it is not a valid event.

        A valid event of its type's current schema version is decoded in one pass
        by `fast`. Anything else (an older version to upcast, or a value that fails
        validation) goes through `_decode_slow`, which applies the upcasters and
        names the precise reason; both accept and refuse exactly the same values.
        """
        if raw is not None:
            try:
                event: Event = self.fast.validate_json(raw)
            except ValidationError:
                pass
            else:
                if event.schema_version == self.current[event.event_type]:
                    if topic is not None and self.topic_of_type[event.event_type] != topic:
                        raise PoisonMessage(f"event_type {event.event_type} does not belong on topic {topic}")
                    if event.data.id != event.aggregate_id:
                        raise PoisonMessage(f"data.id {event.data.id} differs from aggregate_id {event.aggregate_id}")
                    return event
        return self._decode_slow(raw, topic)

    def _decode_slow(self, raw: bytes | None, topic: str | None = None) -> Event:
        if raw is None:
            raise PoisonMessage("empty value (tombstone)")
        try:
            env: dict[str, Any] = _ENVELOPE.validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise PoisonMessage(f"value is not valid JSON: {first['msg']}") from None
            if first["type"] == "dict_type" and not first["loc"]:
                raise PoisonMessage("value is not a JSON object") from None
            raise PoisonMessage(f"invalid envelope: {_describe(exc)}") from None
        event_type: str = env["event_type"]
        if event_type not in self.current:
            raise PoisonMessage(f"unknown event_type {event_type[:100]!r}")
        if topic is not None and self.topic_of_type[event_type] != topic:
            raise PoisonMessage(f"event_type {event_type} does not belong on topic {topic}")
        version: int = env["schema_version"]
        data: dict[str, Any] = env["data"]
        if (event_type, version) not in self.registry:
            raise PoisonMessage(f"unknown schema_version {version} for event_type {event_type}")
        while version < self.current[event_type]:
            upcaster = self.upcasters.get((event_type, version))
            if upcaster is None:
                raise PoisonMessage(f"no upcaster from schema_version {version} of {event_type}")
            data = upcaster(data)
            version += 1
        try:
            payload = self.registry[(event_type, version)].model_validate(data)
        except ValidationError as exc:
            raise PoisonMessage(f"invalid data for {event_type} v{version}: {_describe(exc)}") from None
        assert isinstance(payload, _PAYLOAD_TYPES)
        if payload.id != env["aggregate_id"]:
            raise PoisonMessage(f"data.id {payload.id} differs from aggregate_id {env['aggregate_id']}")
        return Event(**{**env, "schema_version": version, "data": payload})


CODEC: Final = Codec(CATALOGUE)
# The services' decoder: `CODEC.decode`.
decode_event: Final = CODEC.decode
