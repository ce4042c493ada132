"""Pure request parsing helpers."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from order_history.queries import BUCKETS, EXACT_BUCKETS, TAILS, bucket_of, merge_query
from shared.api import ApiError, parse_if_match, reads_request_only


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
    assert "goods_count_bucket(goods_count) = 6 AND goods_count > $3" in sql
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
    assert f"goods_count_bucket(goods_count) = {bucket_of(45)} AND goods_count > $3" in sql


def test_buckets_are_exact_up_to_40_then_widen() -> None:
    assert [bucket_of(n) for n in (1, 2, 40, 41, 48, 49, 64, 65)] == [1, 2, 40, 41, 41, 42, 42, 43]
    assert bucket_of(2**31 - 1) == BUCKETS
    buckets = [bucket_of(n) for n in range(1, 70000)]
    assert buckets == sorted(buckets)


def test_a_weak_etag_never_matches() -> None:
    with pytest.raises(ApiError) as info:
        parse_if_match(request_with('W/"12"'))
    assert info.value.status == 412


def test_only_the_creates_which_read_the_request_themselves_are_served_by_starlette_directly() -> None:
    from starlette.routing import Route

    import goods.api
    import order.api

    url = "postgresql://nobody@127.0.0.1:1/none"
    for module, path in ((order.api, "/v1/order"), (goods.api, "/v1/goods")):
        app = module.create_app(module.Settings(database_url=url))
        direct = [r for r in app.router.routes if type(r) is Route and r.path.startswith("/v1/")]
        assert [(r.path, r.methods) for r in direct] == [(path, {"POST"})]
        assert app.router.routes.index(direct[0]) == 0  # ahead of FastAPI's route for the same path
        others = [(r.path, r.methods) for r in module.router.routes if not reads_request_only(r)]
        assert {m for _, methods in others for m in methods} == {"GET", "PATCH", "DELETE"}
        # The schema still documents the create, from FastAPI's route.
        assert "requestBody" in app.openapi()["paths"][path]["post"]


async def test_a_directly_served_create_keeps_the_apps_error_handling() -> None:
    import httpx

    from order.api import create_app
    from order.settings import Settings

    # No lifespan (so no pool): these requests are refused before they need the database.
    app = create_app(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        bad = await client.post("/v1/order", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_json"
        wrong = await client.post("/v1/order", json={"user_id": "7"})
        assert wrong.status_code == 422 and wrong.json()["fields"][0]["field"] == "user_id"
        get = await client.get("/v1/order")
        assert get.status_code == 405 and get.json()["error"] == "method_not_allowed"
