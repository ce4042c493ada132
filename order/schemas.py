"""Pydantic models at the HTTP boundary."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from shared.events import MAX_ID


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID, description="the user who places the order")


class OrderUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID)


class OrderPublic(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int
