"""Pydantic models at the HTTP boundary of order-history."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: int = Field(default=0, ge=0, le=2**31 - 1, description="list orders with MORE than this many goods")
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=2**31 - 1)


class HistoryItem(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    goods_count: int


class HistoryPage(BaseModel):
    data: list[HistoryItem]


class GoodsItem(BaseModel):
    id: int
    name: str | None
    created_at: dt.datetime | None


class OrderHistoryDetail(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    updated_at: dt.datetime
    goods_count: int
    goods: list[GoodsItem]
