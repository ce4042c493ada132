"""Page cursors of the order-history list: opaque, tamper-evident, bound to one query.

A cursor names the last row of a page by its created_at and id (the sort key
of `sort=-created_at`; for `sort=id`, the id and where to start reading an index
by created_at) and carries a fingerprint of the query it
was made for (filters, threshold and sort; not limit or offset, which a client
may change between pages). Both are signed with HMAC-SHA256 under the key
ORDER_HISTORY_CURSOR_KEY, so a cursor that was altered, forged, or made for
another query is refused (`BadCursor`) instead of silently starting somewhere
else. The next page is then the rows strictly after that key in the query's
order (keyset pagination): inserts and deletes elsewhere in the list move no
row across the key, which is why a walk sees each order at most once and skips
none that matched for the whole walk.

Format, before URL-safe base64 without padding: version (1 byte), fingerprint
(8), id (8), created_at in microseconds since the epoch (8), tag (16).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import string
import struct
from dataclasses import dataclass
from typing import Final

_VERSION = 1
_TAG = 16
_BODY = struct.calcsize(">B8sqq")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# Every cursor encode() makes has this length, and its last character leaves the bits past the
# data at zero (the canonical form decode() insists on): the OpenAPI document's shape of the
# parameter, so that only a string shaped like one of its cursors is valid there.
LENGTH: Final = len(base64.urlsafe_b64encode(bytes(_BODY + _TAG)).rstrip(b"="))
_UNUSED_BITS: Final = (-8 * (_BODY + _TAG)) % 6
_LAST_CHARACTERS: Final = _ALPHABET[:: 1 << _UNUSED_BITS].replace("-", "\\-")
PATTERN: Final = f"^[A-Za-z0-9_-]{{{LENGTH - 1}}}[{_LAST_CHARACTERS}]$"


class BadCursor(ValueError):
    """A cursor that was not made by this service for this query."""


@dataclass(frozen=True)
class After:
    """The last row of a page: the next page starts strictly after it in the query's order."""

    id: int
    created_at: dt.datetime


def micros(at: dt.datetime) -> int:
    """An aware timestamp as whole microseconds since the epoch (PostgreSQL's resolution)."""
    return (at - _EPOCH) // _MICROSECOND


# The times a cursor may name: those a datetime holds, as every created_at read from the database does.
# A valid tag proves only that someone who has the key made the cursor, and the development key is in
# the source: what a cursor names is checked too, before it becomes a datetime or a query's parameter.
_FIRST = micros(dt.datetime.min.replace(tzinfo=dt.UTC))
_LAST = micros(dt.datetime.max.replace(tzinfo=dt.UTC))


def fingerprint(*parts: object) -> bytes:
    """8 bytes that differ, but for a hash collision, between queries whose parts differ."""
    return hashlib.sha256(repr(parts).encode()).digest()[:8]


def encode(key: bytes, query: bytes, after: After) -> str:
    body = struct.pack(">B8sqq", _VERSION, query, after.id, micros(after.created_at))
    tag = hmac.new(key, body, hashlib.sha256).digest()[:_TAG]
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()


def decode(key: bytes, query: bytes, cursor: str) -> After:
    """The key a cursor names, if this service made it for `query`; else BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadCursor("is not a cursor this service made (not URL-safe base64)") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != cursor:  # unused low bits set: not one we made
        raise BadCursor("is not a cursor this service made (not in its canonical form)")
    body, tag = raw[:-_TAG], raw[-_TAG:]
    if len(body) != _BODY or not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()[:_TAG]):
        raise BadCursor("is not a cursor this service made (altered, truncated or forged)")
    version, made_for, last_id, at = struct.unpack(">B8sqq", body)
    if version != _VERSION:
        raise BadCursor("was made by another version of this service: start again without it")
    if made_for != query:
        raise BadCursor("was made for other filters or another sort: start again without it")
    if last_id < 1 or not _FIRST <= at <= _LAST:  # no order's: encode() made no such cursor
        raise BadCursor("is not a cursor this service made (it names no order)")
    return After(id=last_id, created_at=_EPOCH + at * _MICROSECOND)
