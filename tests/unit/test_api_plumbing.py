"""Pure request parsing helpers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from order_history.queries import BAND_UPPER, BANDS, band_of, merge_query
from shared.http.errors import ApiError
from shared.http.fields import parse_if_match


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


def test_a_weak_etag_never_matches() -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with('W/"12"'))
    assert info.value.status == 412


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
