"""Pydantic models at the HTTP boundary of order-history."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from order_history.api import cursors
from shared.events import MAX_ID

# RFC 3339's date-time with its zone (section 5.6; JSON Schema's "date-time"), within what a datetime
# holds: years 1 to 9999, no leap second (:60). The API reads these and no other forms (pydantic alone
# would also take a Unix time, a space for the T, a time without seconds or a zone without a colon).
_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_DATE = rf"{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
_ZONE = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
RFC3339_PATTERN: Final = f"^{_DATE}[Tt]{_TIME}{_ZONE}$"
_RFC3339: Final = re.compile(f"{_DATE}[Tt]{_TIME}{_ZONE}", re.ASCII)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and _RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with a time zone, like 2026-12-01T00:00:00Z")
    return value


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: int = Field(default=0, ge=0, le=2**31 - 1, description="list orders with MORE than this many goods")
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(
        default=0, ge=0, le=2**31 - 1, description="skip this many orders (not with `cursor`; O(offset) work)"
    )
    user_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="only this user's orders")
    created_from: Timestamp | None = Field(
        default=None, description="only orders created at or after this time (RFC 3339, with a time zone)"
    )
    created_to: Timestamp | None = Field(
        default=None, description="only orders created before this time (RFC 3339, with a time zone)"
    )
    sort: Literal["id", "-created_at"] = Field(
        default="id", description="`id`: by id ascending; `-created_at`: newest first, ties by id descending"
    )
    cursor: str | None = Field(
        default=None,
        min_length=cursors.LENGTH,
        max_length=cursors.LENGTH,
        pattern=cursors.PATTERN,
        description="`next_cursor` of the previous page of the same query: the page after it. Only this "
        "service makes them (signed, bound to the query): one it did not make, or made for other filters or "
        "another sort, or with `offset`, answers 422 naming `cursor`",
    )


class HistoryItem(BaseModel):
    id: int
    user_id: int
    created_at: dt.datetime
    goods_count: int


# The shape of every cursor the list gives out, documented (not checked again) on the way out.
_CursorOut = Annotated[
    str,
    WithJsonSchema(
        {"type": "string", "minLength": cursors.LENGTH, "maxLength": cursors.LENGTH, "pattern": cursors.PATTERN}
    ),
]


class HistoryPage(BaseModel):
    data: list[HistoryItem]
    next_cursor: _CursorOut | None = Field(description="pass as `cursor` for the next page; null on the last page")


class GoodsItem(BaseModel):
    id: int
    name: str | None
    price_cents: int | None = Field(description="the price in the currency's smallest unit (cents), if known")
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
