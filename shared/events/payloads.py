"""The payloads of the events: each entity's state as its events carry it, and the types of their fields.

A payload model per shape (created/updated, deleted, resynced snapshot) per
entity; `Payload` is their union, the one list of them. Which event type
carries which model at which schema version is the catalogue's (catalogue.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Final

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.config import JsonDict

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


# A goods item's price in the currency's smallest unit (cents): optional, since schema_version 2.
Price = Annotated[int, Field(ge=0, le=MAX_ID, strict=True)] | None


class GoodsData(_Payload):
    id: Id
    order_id: Id
    name: Text
    price_cents: Price = None
    created_at: Timestamp
    updated_at: Timestamp


class GoodsDeletedData(_Payload):
    id: Id
    order_id: Id
    name: Text = None
    price_cents: Price = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class _Resynced(_Payload):
    """A snapshot re-published by `resync`: the entity's current state in its command service.

    `exists` false: the service has no such entity, and the state fields are
    absent. At GONE_VERSION for an id it deleted (ids are never handed out
    twice); at a lower version for an id its sequence has not handed out yet,
    where the entity it creates later starts above that version (shared/command/resync.py).
    The consumer applies a snapshot also over a read row that claims the same
    version (a repair, not a duplicate), never over a newer one (docs/events.md, "Snapshots").
    """

    # The fields an existing entity's snapshot must carry (also in its JSON Schema: `_required_when_exists`).
    STATE: ClassVar[tuple[str, ...]] = ("created_at", "updated_at")
    exists: bool = True

    @model_validator(mode="after")
    def _whole_state_when_it_exists(self) -> _Resynced:
        if self.exists:
            missing = [name for name in self.STATE if getattr(self, name) is None]
            if missing:
                raise ValueError(f"an existing entity's snapshot needs {', '.join(missing)}")
        return self


def _required_when_exists(*names: str) -> ConfigDict:
    """The JSON Schema of `_whole_state_when_it_exists` (for the AsyncAPI document)."""
    present: JsonDict = {name: {"not": {"type": "null"}} for name in names}
    rule: JsonDict = {
        "if": {"properties": {"exists": {"const": True}}},
        "then": {"required": list(names), "properties": present},
    }
    return ConfigDict(json_schema_extra=rule)


class OrderResyncedData(_Resynced):
    STATE: ClassVar[tuple[str, ...]] = ("user_id", "created_at", "updated_at")
    model_config = _required_when_exists(*STATE)

    id: Id
    user_id: Id | None = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class GoodsResyncedData(_Resynced):
    STATE: ClassVar[tuple[str, ...]] = ("order_id", "created_at", "updated_at")
    model_config = _required_when_exists(*STATE)

    id: Id
    order_id: Id | None = None
    name: Text = None
    price_cents: Price = None
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None


Payload = OrderData | OrderDeletedData | GoodsData | GoodsDeletedData | OrderResyncedData | GoodsResyncedData
