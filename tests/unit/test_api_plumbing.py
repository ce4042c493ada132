"""Pure request parsing helpers."""

from __future__ import annotations

import re

import pytest
from starlette.requests import Request

from order_history.api.queries import BAND_UPPER, BANDS, band_of, merge_query
from shared.http.errors import ApiError
from shared.http.fields import IF_MATCH_PATTERN, parse_if_match, whole_numbers_up_to


def request_with(if_match: str | None) -> Request:
    headers = [] if if_match is None else [(b"if-match", if_match.encode())]
    return Request({"type": "http", "method": "PATCH", "path": "/", "headers": headers, "query_string": b""})


ACCEPTED_IF_MATCH = [(None, None), ("*", None), ('"3"', 3), ("3", 3), (' "12" ', 12), ("\t*\t", None)]
ACCEPTED_IF_MATCH += [('"2147483647"', 2**31 - 1), ("1000000000", 10**9)]
# Unbalanced quotes, leading zeros (a strong tag compares character by character: "03" is not "3"),
# whitespace other than HTTP's spaces and tabs.
REFUSED_IF_MATCH = ['"abc"', '"0"', '"-1"', "", '"99999999999"', '"\u00b2"', '"1"2"', '"2147483648"']
REFUSED_IF_MATCH += ['"3', '3"', '"03"', "03", '\u00a0"3"', '"3"\u00a0']


@pytest.mark.parametrize(("header", "version"), ACCEPTED_IF_MATCH)
def test_if_match_accepts_versions(header: str | None, version: int | None) -> None:
    assert parse_if_match(request_with(header)) == version
    assert header is None or re.search(IF_MATCH_PATTERN, header)  # and the document says so


@pytest.mark.parametrize("header", REFUSED_IF_MATCH)
def test_if_match_rejects_garbage_with_a_400(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with(header))
    assert info.value.status == 400 and info.value.field == "If-Match"
    assert not re.search(IF_MATCH_PATTERN, header)  # and the document says so


@pytest.mark.parametrize("highest", [1, 2, 9, 10, 11, 19, 20, 99, 100, 101, 110, 1203, 2**31 - 1, 2**63 - 1])
def test_the_pattern_of_whole_numbers_admits_exactly_one_to_the_highest(highest: int) -> None:
    pattern = re.compile(whole_numbers_up_to(highest))
    near = {0, 1, 2, 9, 10, 11, 99, 100, 101, *range(highest - 12, highest + 13), highest * 10, highest * 10 + 9}
    for n in {n for n in near if n >= 0} | set(range(min(highest, 5000) + 2)):
        assert bool(pattern.fullmatch(str(n))) == (1 <= n <= highest), n
        assert not pattern.fullmatch(f"0{n}")


def test_merge_query_has_one_branch_per_band_from_the_first_and_filters_only_the_first() -> None:
    sql = merge_query(6)  # band 5 holds 6 to 8: 7 and 8 are above the threshold, 6 is not
    assert band_of(7) == 5
    assert sql.count("UNION ALL") == BANDS - 5
    assert "band = 5 AND goods_count > $1 ORDER BY id)" in sql
    assert "band = 4 " not in sql
    assert sql.count("goods_count > $1") == 1
    assert f"band = {BANDS} ORDER BY id)" in sql


@pytest.mark.parametrize("threshold", [0, 1, 3, 4, 5, 10, 40, 41, 100, 101, 2**31 - 2])
def test_every_threshold_merges_the_bands_from_the_one_holding_the_next_count(threshold: int) -> None:
    first = band_of(threshold + 1)
    sql = merge_query(threshold)
    assert sql.count("UNION ALL") == BANDS - first
    # A band whose lowest count is threshold + 1 holds no count at or below it: no filter, keys only.
    lowest = 1 if first == 1 else BAND_UPPER[first - 2] + 1
    assert (f"band = {first} AND goods_count > $1" in sql) == (threshold + 1 > lowest)
    if first == BANDS:  # one range alone: no merge
        assert "UNION ALL" not in sql


def test_the_branches_read_keys_and_the_page_is_joined_by_id_in_its_order() -> None:
    sql = merge_query(5)
    assert "(SELECT id FROM orders WHERE" in sql
    assert "AS page\nJOIN orders AS o ON o.id = page.id\nORDER BY page.id" in sql
    assert "goods_count >" not in sql  # 5 ends a band


def test_bands_grow_with_the_count_up_to_the_last() -> None:
    assert [band_of(n) for n in (1, 2, 3, 4, 5, 6, 100, 101)] == [1, 2, 3, 4, 4, 5, 11, 12]
    assert band_of(2**31 - 1) == BANDS
    bands = [band_of(n) for n in range(1, 70000)]
    assert bands == sorted(bands)


@pytest.mark.parametrize("header", ['W/"12"', 'W/"abc"', " W/x "])
def test_a_weak_etag_never_matches(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with(header))
    assert info.value.status == 412
    assert re.search(IF_MATCH_PATTERN, header)  # a documented answer to a documented value


def test_every_command_route_is_served_directly_ahead_of_fastapis_and_documented() -> None:
    from starlette.routing import Route

    import goods.api
    import order.api

    url = "postgresql://nobody@127.0.0.1:1/none"
    for module, entity in ((order.api, "order"), (goods.api, "goods")):
        app = module.create_app(module.Settings(database_url=url))
        direct = [(r.path, r.methods) for r in app.router.routes if type(r) is Route and r.path.startswith("/v1/")]
        one = f"/v1/{entity}/{{{entity}_id}}"
        assert direct == [(f"/v1/{entity}", {"POST"}), (one, {"GET", "HEAD", "PATCH", "DELETE"})]
        assert all(type(r) is Route for r in app.router.routes[:2])  # ahead of FastAPI's
        paths = app.openapi()["paths"]
        assert set(paths[f"/v1/{entity}"]) == {"post"}
        assert set(paths[one]) == {"get", "patch", "delete"}
