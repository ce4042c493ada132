"""Pure request parsing helpers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from order_history.queries import BUCKETS, EXACT_BUCKETS, TAILS, bucket_of, merge_query
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


def test_merge_query_has_one_branch_per_exact_bucket_up_to_the_next_tail_and_one_for_the_tail() -> None:
    sql = merge_query(bucket_of(6))
    assert sql.count("UNION ALL") == 10 - 6 + 1
    assert "goods_count_bucket(goods_count) = 6 AND goods_count > $1" in sql
    assert "goods_count_bucket(goods_count) = 5 " not in sql
    assert "goods_count_bucket(goods_count) = 11 " not in sql
    assert "goods_count > 10 ORDER BY id)" in sql


@pytest.mark.parametrize("threshold", range(EXACT_BUCKETS))
def test_every_threshold_below_the_wide_buckets_merges_at_most_eleven_ranges(threshold: int) -> None:
    sql = merge_query(bucket_of(threshold + 1))
    tail = next(t for t in TAILS if t >= threshold)
    assert sql.count("UNION ALL") == tail - threshold <= 10
    assert f"goods_count > {tail} ORDER BY id" in sql
    assert [t for t in TAILS if f"goods_count > {t} ORDER BY" in sql] == [tail]


def test_merge_query_above_the_exact_buckets_uses_the_wide_ones() -> None:
    sql = merge_query(bucket_of(45))
    assert sql.count("UNION ALL") == BUCKETS - bucket_of(45)
    assert f"goods_count_bucket(goods_count) = {bucket_of(45)} AND goods_count > $1" in sql


def test_buckets_are_exact_up_to_40_then_widen() -> None:
    assert [bucket_of(n) for n in (1, 2, 40, 41, 48, 49, 64, 65)] == [1, 2, 40, 41, 41, 42, 42, 43]
    assert bucket_of(2**31 - 1) == BUCKETS
    buckets = [bucket_of(n) for n in range(1, 70000)]
    assert buckets == sorted(buckets)


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
