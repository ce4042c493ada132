"""Cursors of GET /v1/order-history that this service did not make, against the real app and database.

Whatever a client sends as `cursor` gets a 422 naming `cursor` or, for a cursor
that names a real place in the query (one the service could have made), a 200:
never a 5xx. The signed cases are signed with the key the app runs with, as
anyone who knows that key can: the development key is in the source, so a
cursor's HMAC proves nothing about what it carries.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from order_history.api import cursors
from order_history.api.app import Listing
from order_history.api.schemas import HistoryQuery
from order_history.settings import DEV_CURSOR_KEY
from tests.harness import Env

# A cursor of the default query signed with the development key, naming 2^62 microseconds after the epoch.
FORGED = "AWtxrnmNezseAAAAAAAAAAFAAAAAAAAAAHU85AAwxCDnZ-FRkqhnO4Y"

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# The queries the signed cursors are made for: each way the list reads a cursor's key.
QUERIES: list[dict[str, Any]] = [
    {},
    {"sort": "-created_at"},
    {"user_id": 1},
    {"user_id": 1, "sort": "-created_at"},
    {"created_from": "2026-01-01T00:00:00Z"},
    {"created_to": "2026-01-02T00:00:00Z", "threshold": 2},
]
FIRST = cursors.micros(dt.datetime.min.replace(tzinfo=dt.UTC))
LAST = cursors.micros(dt.datetime.max.replace(tzinfo=dt.UTC))
INT64 = st.integers(-(2**63), 2**63 - 1)
IDS = st.one_of(st.sampled_from([0, 1, -1, 2, -(2**63), 2**63 - 2, 2**63 - 1]), INT64)
TIMES = st.one_of(
    st.sampled_from([0, -1, 1, -(2**63), 2**63 - 1, 2**62, FIRST - 1, FIRST, FIRST + 1, LAST - 1, LAST, LAST + 1]),
    st.integers(FIRST, LAST),
    INT64,
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    # The client and its read model are shared by the examples on purpose: they only read.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def sign(key: bytes, version: int, query: bytes, last_id: int, at: int) -> str:
    """A cursor in encode()'s format with whatever it holds: what someone who knows the key can send."""
    body = struct.pack(">B8sqq", version, query, last_id, at)
    tag = hmac.new(key, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()


def fingerprint_of(params: dict[str, Any]) -> bytes:
    listing = Listing(cursor_key=b"", skew=dt.timedelta(seconds=5))
    return listing.query_of(HistoryQuery.model_validate(params)).fingerprint()


EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)
# (id, created_at, goods_count) of user 1's orders: ids in created_at order, as the order service gives them
# (the id sort of a user's orders relies on it), three of them at each end of the times an event may carry.
ROWS = [
    (i + 1, at, 1 + i % 4)
    for i, at in enumerate([*[EARLIEST] * 3, *(BASE + dt.timedelta(minutes=m) for m in range(20)), *[LATEST] * 3])
]


@pytest.fixture
async def history(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """The API over ROWS."""
    pool = await env.pool("order_history")
    # As text, as the consumer writes times: asyncpg would write the two ends as -infinity and infinity.
    await pool.executemany(
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
           VALUES ($1, 1, $2::text::timestamptz, $2::text::timestamptz, 1, true, false, $3)""",
        [(i, at.isoformat(), count) for i, at, count in ROWS],
    )
    async with env.client("order_history") as client:
        yield client


def expected_ids(params: dict[str, Any]) -> list[int]:
    """What a query of QUERIES lists of ROWS, in its order."""
    after = dt.datetime.fromisoformat(params.get("created_from", "0001-01-01T00:00:00+00:00"))
    before = params.get("created_to")
    rows = [
        (i, at)
        for i, at, count in ROWS
        if count > params.get("threshold", 0)
        and at >= after
        and (before is None or at < dt.datetime.fromisoformat(before))
    ]
    if params.get("sort") == "-created_at":
        rows.sort(reverse=True, key=lambda row: (row[1], row[0]))
    return [i for i, _ in rows]


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 422, (response.request.url, response.status_code, response.text)
    assert [f["field"] for f in response.json()["fields"]] == ["cursor"], response.text


async def refused(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    assert_refused(await client.get("/v1/order-history", params=params))


async def test_a_forged_cursor_signed_with_the_development_key_is_refused(env: Env) -> None:
    async with env.client("order_history", cursor_key=SecretStr(DEV_CURSOR_KEY)) as client:
        await refused(client, {"cursor": FORGED})


async def test_cursors_walk_past_orders_at_the_ends_of_time(history: httpx.AsyncClient) -> None:
    """Each order once, in the query's order, one page at a time, past ties at the first and last times."""
    for params in QUERIES:
        expected = expected_ids(params)
        seen: list[int] = []
        cursor = None
        for _ in range(len(ROWS) + 1):
            page_params = {**params, "limit": 1, **({"cursor": cursor} if cursor else {})}
            response = await history.get("/v1/order-history", params=page_params)
            assert response.status_code == 200, (page_params, response.text)
            seen += [o["id"] for o in response.json()["data"]]
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == expected, params
    shown = (await history.get("/v1/order-history", params={"sort": "-created_at", "limit": 1})).json()["data"]
    assert shown[0]["created_at"] == "9999-12-31T23:59:59.999999Z"


@FUZZ
@given(cursor=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
async def test_any_string_is_refused(history: httpx.AsyncClient, cursor: str) -> None:
    await refused(history, {"cursor": cursor})


@FUZZ
@given(raw=st.binary(min_size=41, max_size=41), params=st.sampled_from(QUERIES))
async def test_any_body_of_a_cursors_length_is_refused(
    history: httpx.AsyncClient, raw: bytes, params: dict[str, Any]
) -> None:
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    await refused(history, {**params, "cursor": cursor})


@FUZZ
@given(
    params=st.sampled_from(QUERIES),
    version=st.one_of(st.just(1), st.integers(0, 255)),
    other_query=st.one_of(st.none(), st.binary(min_size=8, max_size=8)),
    last_id=IDS,
    at=TIMES,
)
async def test_a_signed_cursor_is_a_page_if_it_names_a_place_and_refused_if_not(
    env: Env,
    history: httpx.AsyncClient,
    params: dict[str, Any],
    version: int,
    other_query: bytes | None,
    last_id: int,
    at: int,
) -> None:
    key = env.history_settings().cursor_key.get_secret_value().encode()
    query = fingerprint_of(params)
    made_for = query if other_query is None else other_query
    cursor = sign(key, version, made_for, last_id, at)
    response = await history.get("/v1/order-history", params={**params, "cursor": cursor})
    assert response.status_code < 500, response.text
    if version == 1 and made_for == query and last_id >= 1 and FIRST <= at <= LAST:
        assert response.status_code == 200, response.text
    else:
        assert_refused(response)


async def test_the_api_warns_at_startup_only_with_the_development_key(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cursor" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        async with env.client("order_history"):
            pass
        assert warnings() == [], "the test stack sets a key of its own"
        async with env.client("order_history", cursor_key=SecretStr(DEV_CURSOR_KEY)):
            pass
    assert len(warnings()) == 1
    assert "public development key" in warnings()[0] and "ORDER_HISTORY_CURSOR_KEY" in warnings()[0]
