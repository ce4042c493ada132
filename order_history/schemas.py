"""Pydantic models at the HTTP boundary of order-history."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from order_history import cursors
from shared.events import MAX_ID


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: int = Field(default=0, ge=0, le=2**31 - 1, description="list orders with MORE than this many goods")
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(
        default=0, ge=0, le=2**31 - 1, description="skip this many orders (not with `cursor`; O(offset) work)"
    )
    user_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="only this user's orders")
    created_from: AwareDatetime | None = Field(
        default=None, description="only orders created at or after this time (RFC 3339, with a time zone)"
    )
    created_to: AwareDatetime | None = Field(
        default=None, description="only orders created before this time (RFC 3339, with a time zone)"
    )
    sort: Literal["id", "-created_at"] = Field(
        default="id", description="`id`: by id ascending; `-created_at`: newest first, ties by id descending"
    )
    cursor: str | None = Field(
        default=None,
        min_length=1,
        max_length=cursors.MAX_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page of the same query: the page after it",
    )


class HistoryItem(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    goods_count: int


class HistoryPage(BaseModel):
    data: list[HistoryItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class GoodsItem(BaseModel):
    id: int
    name: str | None
    created_at: dt.datetime | None


# The goods of one order that GET /v1/order-history/{order_id} shows at most, by default and at all.
GOODS_LIMIT = 100
MAX_GOODS_LIMIT = 1000


class OrderHistoryDetail(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    updated_at: dt.datetime
    goods_count: int = Field(description="the order's live goods, all of them (not only those of this page)")
    goods: list[GoodsItem] = Field(description="a page of the order's live goods, by id: at most `goods_limit`")
    goods_next: int | None = Field(
        description="pass as `goods_after` for the order's next goods; null when `goods` holds the last of them"
    )
