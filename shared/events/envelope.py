"""The envelope: `Event`, the one statement of an event's fields, and the two ways events are made
(`new_event` in Python, `envelope_sql` in the outbox's SQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Final

import orjson
from pydantic import Field

from shared.events.catalogue import CATALOGUE, TOPIC_OF_TYPE, EventType, KnownType, _known_type
from shared.events.payloads import Id, Payload, Timestamp

SchemaVersion = Annotated[int, Field(ge=1, strict=True)]
MAX_VERSION: Final = 2**31 - 1
AggregateVersion = Annotated[int, Field(ge=1, le=MAX_VERSION, strict=True)]
# The aggregate_version of a snapshot saying "no such entity" of an id its service
# deleted: deleted for good, so no later event of it can exist, and no late one may
# resurrect it. (An id the service has not handed out yet is removed at a lower
# version: shared/command/resync.py.)
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
