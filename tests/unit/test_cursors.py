"""Page cursors (order_history/api/cursors.py): round trip, and refusal of anything altered, foreign or forged."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from order_history.api import cursors
from order_history.api.queries import ListQuery
from order_history.settings import DEV_CURSOR_KEY

KEY = b"k"
QUERY = cursors.fingerprint(0, 7, None, None, True)
AFTER = cursors.After(id=2**63 - 1, created_at=dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC))


def test_a_cursor_names_its_row_exactly_and_has_the_documented_shape() -> None:
    cursor = cursors.encode(KEY, QUERY, AFTER)
    assert len(cursor) == cursors.LENGTH and re.fullmatch(cursors.PATTERN, cursor)
    assert cursors.decode(KEY, QUERY, cursor) == AFTER
    early = cursors.After(id=1, created_at=dt.datetime(1, 1, 1, tzinfo=dt.UTC))
    assert cursors.decode(KEY, QUERY, cursors.encode(KEY, QUERY, early)) == early


def test_every_altered_character_is_refused() -> None:
    cursor = cursors.encode(KEY, QUERY, AFTER)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(cursor):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        with pytest.raises(cursors.BadCursor):
            cursors.decode(KEY, QUERY, cursor[:i] + other + cursor[i + 1 :])


@pytest.mark.parametrize("cursor", ["", "!", "abc", "A" * 63, "A" * 5000])
def test_garbage_is_refused(cursor: str) -> None:
    with pytest.raises(cursors.BadCursor):
        cursors.decode(KEY, QUERY, cursor)


def test_a_cursor_of_another_query_or_key_is_refused() -> None:
    cursor = cursors.encode(KEY, QUERY, AFTER)
    with pytest.raises(cursors.BadCursor, match="other filters"):
        cursors.decode(KEY, cursors.fingerprint(0, 8, None, None, True), cursor)
    with pytest.raises(cursors.BadCursor):
        cursors.decode(b"another key", QUERY, cursor)


# What someone who knows the key can sign: encode()'s format with any values in it.
def signed(key: bytes, query: bytes, last_id: int, at: int, version: int = 1) -> str:
    body = struct.pack(">B8sqq", version, query, last_id, at)
    tag = hmac.new(key, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()


FIRST = cursors.micros(dt.datetime.min.replace(tzinfo=dt.UTC))
LAST = cursors.micros(dt.datetime.max.replace(tzinfo=dt.UTC))
INT64 = st.integers(-(2**63), 2**63 - 1)
EXTREMES = [0, 1, -1, -(2**63), 2**63 - 1, 2**62, FIRST - 1, FIRST, LAST, LAST + 1]


def test_the_issues_cursor_signed_with_the_development_key_is_refused() -> None:
    forged = "AWtxrnmNezseAAAAAAAAAAFAAAAAAAAAAHU85AAwxCDnZ-FRkqhnO4Y"
    with pytest.raises(cursors.BadCursor, match="names no order"):
        cursors.decode(DEV_CURSOR_KEY.encode(), ListQuery().fingerprint(), forged)


@pytest.mark.parametrize("last_id", [0, -1, -(2**63)])
def test_a_signed_cursor_naming_no_order_id_is_refused(last_id: int) -> None:
    with pytest.raises(cursors.BadCursor, match="names no order"):
        cursors.decode(KEY, QUERY, signed(KEY, QUERY, last_id, 0))


@pytest.mark.parametrize("at", [FIRST - 1, LAST + 1, -(2**63), 2**63 - 1, 2**62])
def test_a_signed_cursor_naming_a_time_no_datetime_holds_is_refused(at: int) -> None:
    with pytest.raises(cursors.BadCursor, match="names no order"):
        cursors.decode(KEY, QUERY, signed(KEY, QUERY, 1, at))


def test_the_ends_of_time_and_of_the_ids_are_places_a_cursor_may_name() -> None:
    for at, created_at in ((FIRST, dt.datetime.min), (LAST, dt.datetime.max), (0, dt.datetime(1970, 1, 1))):
        for last_id in (1, 2**63 - 1):
            after = cursors.decode(KEY, QUERY, signed(KEY, QUERY, last_id, at))
            assert after == cursors.After(id=last_id, created_at=created_at.replace(tzinfo=dt.UTC))


@settings(max_examples=500)
@given(st.text(max_size=100))
def test_any_string_is_a_cursor_or_refused(cursor: str) -> None:
    try:
        cursors.decode(KEY, QUERY, cursor)
    except cursors.BadCursor:
        pass


@settings(max_examples=500)
@given(st.binary(min_size=41, max_size=41))
def test_any_body_of_a_cursors_length_is_refused_unless_signed(raw: bytes) -> None:
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert re.fullmatch(cursors.PATTERN, cursor)  # of the documented shape, yet refused: a documented 422
    with pytest.raises(cursors.BadCursor, match="altered, truncated or forged"):
        cursors.decode(KEY, QUERY, cursor)


@settings(max_examples=500)
@given(st.from_regex(cursors.PATTERN, fullmatch=True))
def test_every_string_of_the_documented_shape_is_a_cursors_body(cursor: str) -> None:
    """The pattern is no wider than encode()'s output: only the signature can refuse such a string."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    assert len(raw) == 41 and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == cursor


@settings(max_examples=1000)
@given(
    last_id=st.one_of(st.sampled_from(EXTREMES), INT64),
    at=st.one_of(st.sampled_from(EXTREMES), st.integers(FIRST, LAST), INT64),
    version=st.one_of(st.just(1), st.integers(0, 255)),
)
def test_a_signed_cursor_is_decoded_only_if_it_names_an_order_id_and_a_time(
    last_id: int, at: int, version: int
) -> None:
    cursor = signed(KEY, QUERY, last_id, at, version)
    if version == 1 and last_id >= 1 and FIRST <= at <= LAST:
        after = cursors.decode(KEY, QUERY, cursor)
        assert after.id == last_id and cursors.micros(after.created_at) == at
        assert after.created_at.utcoffset() == dt.timedelta(0)
    else:
        with pytest.raises(cursors.BadCursor):
            cursors.decode(KEY, QUERY, cursor)


@given(
    last_id=st.integers(1, 2**63 - 1),
    created_at=st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))])),
)
def test_every_cursor_encode_makes_is_decoded_to_its_row(last_id: int, created_at: dt.datetime) -> None:
    # Python's own limits: no time of year 1 east of UTC or of year 9999 west of it.
    assume(dt.datetime.min.replace(tzinfo=dt.UTC) <= created_at <= dt.datetime.max.replace(tzinfo=dt.UTC))
    after = cursors.After(id=last_id, created_at=created_at)
    cursor = cursors.encode(KEY, QUERY, after)
    assert re.fullmatch(cursors.PATTERN, cursor)
    assert cursors.decode(KEY, QUERY, cursor) == after
