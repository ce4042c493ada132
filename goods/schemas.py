"""Pydantic models at the HTTP boundary."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.events import MAX_ID


def _storable(value: str | None) -> str | None:
    # PostgreSQL text cannot hold the NUL character.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


Name = Annotated[str | None, Field(max_length=200, description="free text, may be null"), AfterValidator(_storable)]


class GoodsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: int = Field(ge=1, le=MAX_ID, description="the order these goods belong to")
    name: Name = None


class GoodsUpdate(BaseModel):
    """Fields to change; at least one. `name: null` clears the name."""

    model_config = ConfigDict(extra="forbid")

    order_id: int = Field(default=0, ge=1, le=MAX_ID)
    name: Name = None

    @model_validator(mode="after")
    def _something_to_change(self) -> GoodsUpdate:
        if not self.model_fields_set & {"order_id", "name"}:
            raise ValueError("send order_id and/or name to change")
        return self


class GoodsPublic(BaseModel):
    id: int
    order_id: int
    name: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int
