"""Pure request parsing helpers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from order_history.queries import merge_query
from shared.api import ApiError, parse_if_match


def request_with(if_match: str | None) -> Request:
    headers = [] if if_match is None else [(b"if-match", if_match.encode())]
    return Request({"type": "http", "method": "PATCH", "path": "/", "headers": headers, "query_string": b""})


@pytest.mark.parametrize(("header", "version"), [(None, None), ("*", None), ('"3"', 3), ("3", 3), (' "12" ', 12)])
def test_if_match_accepts_versions(header: str | None, version: int | None) -> None:
    assert parse_if_match(request_with(header)) == version


@pytest.mark.parametrize("header", ['"abc"', '"0"', '"-1"', "", '"99999999999"', '"\u00b2"', '"1"2"'])
def test_if_match_rejects_garbage_with_a_400(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with(header))
    assert info.value.status == 400 and info.value.field == "If-Match"


def test_merge_query_has_one_branch_per_count_and_an_optional_tail() -> None:
    sql = merge_query(3, tail=False)
    assert sql.count("UNION ALL") == 2 and "$5" in sql and "$6" not in sql
    tail = merge_query(2, tail=True)
    assert "goods_count >= $5" in tail and tail.count("UNION ALL") == 2


def test_a_weak_etag_never_matches() -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with('W/"12"'))
    assert info.value.status == 412
