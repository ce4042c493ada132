"""Page cursors (order_history/cursors.py): round trip, and refusal of anything altered or foreign."""

from __future__ import annotations

import datetime as dt

import pytest

from order_history import cursors

KEY = b"k"
QUERY = cursors.fingerprint(0, 7, None, None, True)
AFTER = cursors.After(id=2**63 - 1, created_at=dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC))


def test_a_cursor_names_its_row_exactly_and_fits_the_documented_length() -> None:
    cursor = cursors.encode(KEY, QUERY, AFTER)
    assert len(cursor) <= cursors.MAX_LENGTH and cursor.replace("-", "").replace("_", "").isalnum()
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
