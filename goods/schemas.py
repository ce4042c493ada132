"""Pydantic models at the HTTP boundary."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from shared.events import MAX_ID, MAX_NAME_LENGTH, Price, Text

Name = Annotated[Text, Field(max_length=MAX_NAME_LENGTH, description="free text, may be null")]
PriceCents = Annotated[Price, Field(description="the price in the currency's smallest unit (cents), may be null")]
_ORDER_ID_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}


class GoodsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: int = Field(ge=1, le=MAX_ID, description="the order these goods belong to")
    name: Name = None
    price_cents: PriceCents = None


class GoodsUpdate(BaseModel):
    """Fields to change; at least one. `name: null` clears the name, `price_cents: null` the price."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    order_id: Annotated[
        int | None, Field(ge=1, le=MAX_ID, description="move the goods to this order"), WithJsonSchema(_ORDER_ID_SCHEMA)
    ] = None
    name: Name = None
    price_cents: PriceCents = None

    @field_validator("order_id", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("order_id cannot be null; leave it out to keep the order")
        return value

    @model_validator(mode="after")
    def _something_to_change(self) -> GoodsUpdate:
        if not self.model_fields_set:
            raise ValueError(f"send at least one of {', '.join(type(self).model_fields)} to change")
        return self


class GoodsPublic(BaseModel):
    id: int
    order_id: int
    name: str | None
    price_cents: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int
