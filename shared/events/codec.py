"""Decoding raw Kafka values into events: `decode_event`, or `PoisonMessage` with a reason fit for a
DLQ header. Older schema versions are lifted by the catalogue's upcasters."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from shared.events.catalogue import CATALOGUE, EventKind, EventType
from shared.events.envelope import ENVELOPE_FIELDS, FIELD_TYPES, Event
from shared.events.payloads import Payload, _Payload


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


_PAYLOAD_TYPES: Final = typing.get_args(Payload)  # the union's members, as isinstance takes them


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
