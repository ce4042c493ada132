"""Contract tests of the goods API (SPEC.md, "goods API" and "Errors").

Every accepted write is checked against the database (entity row and one outbox
row); every refused write is checked to have written nothing at all.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.harness import Env
from tests.integration.test_order_api import (
    BAD_IF_MATCH,
    BAD_PATH_IDS,
    JSON,
    MAX_ID,
    Bad,
    parse_time,
    refusal_problem,
    snapshot,
)
from tests.integration.test_order_api import check_refusals as _check_refusals

GOODS_KEYS = {"id", "order_id", "name", "price_cents", "created_at", "updated_at", "version"}
NAMES_ORDER_ID = ("order_id", "orderid")


# -- helpers ---------------------------------------------------------------------


def assert_goods_body(body: object, *, order_id: int, name: str | None, version: int) -> dict[str, Any]:
    assert isinstance(body, dict), body
    assert set(body) == GOODS_KEYS, f"goods body keys {sorted(body)} != {sorted(GOODS_KEYS)}"
    assert type(body["id"]) is int
    assert 1 <= body["id"] <= MAX_ID
    assert type(body["order_id"]) is int
    assert body["order_id"] == order_id
    assert body["name"] == name
    assert type(body["version"]) is int
    assert body["version"] == version
    created = parse_time(body["created_at"])
    updated = parse_time(body["updated_at"])
    assert updated >= created
    return body


async def check_refusals(env: Env, client: httpx.AsyncClient, method: str, url: str, cases: list[Bad]) -> None:
    await _check_refusals(env, client, method, url, cases, service="goods")


async def outbox_events(env: Env) -> list[dict[str, Any]]:
    pool = await env.pool("goods")
    rows = await pool.fetch("SELECT topic, message_key, payload::text AS payload FROM outbox ORDER BY id")
    out = []
    for r in rows:
        assert r["topic"] == "goods.events"
        event: dict[str, Any] = json.loads(r["payload"])
        assert r["message_key"] == str(event["aggregate_id"])
        out.append(event)
    return out


async def create(client: httpx.AsyncClient, order_id: int = 3, name: str | None = "lamp") -> dict[str, Any]:
    body: dict[str, Any] = {"order_id": order_id}
    if name is not None:
        body["name"] = name
    resp = await client.post("/v1/goods", json=body)
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


# Bodies no goods write accepts, POST and PATCH alike.
BAD_EITHER = [
    Bad("order_id null", NAMES_ORDER_ID, {"json": {"order_id": None, "name": "lamp"}}),
    Bad("order_id string", NAMES_ORDER_ID, {"json": {"order_id": "3", "name": "lamp"}}),
    Bad("order_id true", NAMES_ORDER_ID, {"json": {"order_id": True}}),
    Bad("order_id float", NAMES_ORDER_ID, {"json": {"order_id": 1.5}}),
    Bad("order_id 3.5", NAMES_ORDER_ID, {"content": b'{"order_id": 3.5}', "headers": JSON}),
    Bad("order_id list", NAMES_ORDER_ID, {"json": {"order_id": [3]}}),
    Bad("order_id zero", NAMES_ORDER_ID, {"json": {"order_id": 0}}),
    Bad("order_id negative", NAMES_ORDER_ID, {"json": {"order_id": -1}}),
    Bad("order_id 2**63", NAMES_ORDER_ID, {"json": {"order_id": MAX_ID + 1}}),
    Bad("order_id 2**64", NAMES_ORDER_ID, {"json": {"order_id": 2**64}}),
    Bad("order_id 20 digits", NAMES_ORDER_ID, {"content": b'{"order_id": 99999999999999999999}', "headers": JSON}),
    Bad("name number", ("name",), {"json": {"order_id": 3, "name": 5}}),
    Bad("name true", ("name",), {"json": {"order_id": 3, "name": True}}),
    Bad("name list", ("name",), {"json": {"order_id": 3, "name": ["lamp"]}}),
    Bad("name object", ("name",), {"json": {"order_id": 3, "name": {"text": "lamp"}}}),
    Bad("unknown extra field", ("colour",), {"json": {"order_id": 3, "colour": "red"}}),
    Bad("not JSON", ("body", "json"), {"content": b"{", "headers": JSON}),
    Bad("not JSON, trailing garbage", ("body", "json"), {"content": b'{"order_id": 3} x', "headers": JSON}),
    Bad("empty JSON body", ("body",), {"content": b"", "headers": JSON}),
    Bad("JSON array", ("body",), {"json": [{"order_id": 3}]}),
    Bad("JSON string", ("body",), {"json": "order_id=3"}),
    Bad("JSON null", ("body",), {"content": b"null", "headers": JSON}),
    Bad("text/plain body", ("content-type",), {"content": b"order_id=3", "headers": {"content-type": "text/plain"}}),
    Bad("form orderId abc", NAMES_ORDER_ID, {"data": {"orderId": "abc"}}),
    Bad("form orderId empty", NAMES_ORDER_ID, {"data": {"orderId": ""}}),
    Bad("form orderId 1.5", NAMES_ORDER_ID, {"data": {"orderId": "1.5"}}),
    Bad("form orderId 0", NAMES_ORDER_ID, {"data": {"orderId": "0"}}),
    Bad("form orderId -1", NAMES_ORDER_ID, {"data": {"orderId": "-1"}}),
    Bad("form orderId 2**63", NAMES_ORDER_ID, {"data": {"orderId": str(MAX_ID + 1)}}),
    Bad("query orderId abc", NAMES_ORDER_ID, params={"orderId": "abc"}),
    Bad("query orderId 0", NAMES_ORDER_ID, params={"orderId": "0"}),
    Bad("query orderId -1", NAMES_ORDER_ID, params={"orderId": "-1"}),
    Bad("query orderId 2**63", NAMES_ORDER_ID, params={"orderId": str(MAX_ID + 1)}),
]
BAD_CREATE = [
    *BAD_EITHER,
    Bad("missing order_id", NAMES_ORDER_ID, {"json": {}}),
    Bad("name but no order_id", NAMES_ORDER_ID, {"json": {"name": "lamp"}}),
    Bad("only orderId in JSON", NAMES_ORDER_ID, {"json": {"orderId": 3}}),
    Bad("form missing orderId", NAMES_ORDER_ID, {"data": {"name": "lamp"}}),
    Bad("query missing orderId", NAMES_ORDER_ID, params={"name": "lamp"}),
    Bad("no body, no query", NAMES_ORDER_ID),
]
NOTHING_TO_CHANGE = ("order_id", "name", "orderid")
BAD_PATCH = [
    *BAD_EITHER,
    Bad("empty object", NOTHING_TO_CHANGE, {"json": {}}),
    Bad("only an unknown field", NOTHING_TO_CHANGE, {"json": {"orderId": 3}}),
    Bad("no body, no query", NOTHING_TO_CHANGE),
]


# -- POST ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "name"),
    [("json", "lamp"), ("json", None), ("form", None), ("form", "lamp"), ("query", None), ("query", "lamp")],
)
async def test_create(env: Env, how: str, name: str | None) -> None:
    kwargs: dict[str, Any]
    if how == "json":
        kwargs = {"json": {"order_id": 3} | ({"name": name} if name is not None else {})}
    else:
        fields = {"orderId": "3"} | ({"name": name} if name is not None else {})
        kwargs = {"data": fields} if how == "form" else {"params": fields}
    async with env.client("goods") as client:
        resp = await client.post("/v1/goods", **kwargs)
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        body = assert_goods_body(resp.json(), order_id=3, name=name, version=1)
        assert resp.headers["location"] == f"/v1/goods/{body['id']}"
        assert body["created_at"] == body["updated_at"]

        fetched = await client.get(resp.headers["location"])
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == body

    pool = await env.pool("goods")
    rows = await pool.fetch("SELECT id, order_id, name, version FROM goods")
    assert [tuple(r) for r in rows] == [(body["id"], 3, name, 1)]
    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_id"], e["aggregate_version"]) for e in events] == [
        ("goods.created", body["id"], 1)
    ]
    assert events[0]["data"]["order_id"] == 3
    assert events[0]["data"]["name"] == name


async def test_create_explicit_null_name_and_unknown_order(env: Env) -> None:
    """name may be null; the goods service does not ask whether the order exists."""
    async with env.client("goods") as client:
        resp = await client.post("/v1/goods", json={"order_id": MAX_ID, "name": None})
        assert resp.status_code == 201, resp.text
        assert_goods_body(resp.json(), order_id=MAX_ID, name=None, version=1)
        unicode = await client.post("/v1/goods", json={"order_id": 1, "name": "Lampe \u00e0 huile \u2013 \U0001f4a1"})
        assert unicode.status_code == 201, unicode.text
        assert unicode.json()["name"] == "Lampe \u00e0 huile \u2013 \U0001f4a1"


async def test_create_refusals(env: Env) -> None:
    async with env.client("goods") as client:
        await create(client)
        await check_refusals(env, client, "POST", "/v1/goods", BAD_CREATE)


async def test_name_that_postgres_cannot_store_is_refused_not_500(env: Env) -> None:
    """A NUL character is valid JSON and a valid Python str, but PostgreSQL text cannot hold it."""
    async with env.client("goods") as client:
        created = await create(client)
        url = f"/v1/goods/{created['id']}"
        attempts: list[tuple[str, str, Bad]] = [
            (
                "POST",
                "/v1/goods",
                Bad("name with NUL (JSON)", ("name",), {"json": {"order_id": 3, "name": "la\u0000mp"}}),
            ),
            (
                "POST",
                "/v1/goods",
                Bad("name with NUL (form)", ("name",), {"data": {"orderId": "3", "name": "la\x00mp"}}),
            ),
            ("PATCH", url, Bad("name with NUL (JSON)", ("name",), {"json": {"name": "la\u0000mp"}})),
        ]
        problems = []
        for method, target, case in attempts:
            try:
                await check_refusals(env, client, method, target, [case])
            except AssertionError as exc:
                problems.append(str(exc).split("\nassert")[0])
        assert not problems, "\n".join(problems)
        assert (await client.get(url)).json() == created


async def test_very_long_name_is_stored_or_refused_by_name(env: Env) -> None:
    async with env.client("goods") as client:
        before = await snapshot(env, "goods")
        resp = await client.post("/v1/goods", json={"order_id": 3, "name": "x" * 100_000})
        if resp.status_code == 201:
            assert resp.json()["name"] == "x" * 100_000
        else:
            assert refusal_problem(resp, ("name",)) is None, resp.text
            assert await snapshot(env, "goods") == before


# -- GET -------------------------------------------------------------------------


async def test_get(env: Env) -> None:
    async with env.client("goods") as client:
        created = await create(client, order_id=5, name="chair")
        resp = await client.get(f"/v1/goods/{created['id']}")
        assert resp.status_code == 200, resp.text
        assert assert_goods_body(resp.json(), order_id=5, name="chair", version=1) == created

        missing = await client.get(f"/v1/goods/{created['id'] + 1}")
        assert missing.status_code == 404, missing.text
        assert refusal_problem(missing, ("id",)) is None, missing.text
        assert (await client.get(f"/v1/goods/{MAX_ID}")).status_code == 404

        problems = []
        for bad in BAD_PATH_IDS:
            resp = await client.get(f"/v1/goods/{bad}")
            problem = refusal_problem(resp, ("id",))
            if problem:
                problems.append(f"GET /v1/goods/{bad}: {problem}")
        assert not problems, "\n".join(problems)


# -- PATCH -----------------------------------------------------------------------


async def test_patch_fields(env: Env) -> None:
    async with env.client("goods") as client:
        created = await create(client, order_id=3, name="lamp")
        url = f"/v1/goods/{created['id']}"
        steps: list[tuple[dict[str, Any], int, str | None]] = [
            ({"order_id": 4}, 4, "lamp"),  # move: name unchanged
            ({"name": "desk lamp"}, 4, "desk lamp"),  # rename: order unchanged
            ({"order_id": 5, "name": "floor lamp"}, 5, "floor lamp"),  # both
            ({"name": None}, 5, None),  # null clears the name
            ({"order_id": 5}, 5, None),  # same order again: still a change of version
            ({"name": "lamp"}, 5, "lamp"),  # a name again
        ]
        previous = created
        for version, (patch, order_id, name) in enumerate(steps, start=2):
            resp = await client.patch(url, json=patch)
            assert resp.status_code == 200, f"{patch}: {resp.text}"
            body = assert_goods_body(resp.json(), order_id=order_id, name=name, version=version)
            assert body["id"] == created["id"]
            assert body["created_at"] == created["created_at"]
            assert parse_time(body["updated_at"]) >= parse_time(previous["updated_at"])
            assert (await client.get(url)).json() == body
            previous = body

    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_version"], e["data"]["order_id"], e["data"]["name"]) for e in events] == [
        ("goods.created", 1, 3, "lamp"),
        *[("goods.updated", v, o, n) for v, (_, o, n) in enumerate(steps, start=2)],
    ]


async def test_patch_if_match(env: Env) -> None:
    async with env.client("goods") as client:
        created = await create(client)
        url = f"/v1/goods/{created['id']}"

        ok = await client.patch(url, json={"name": "desk lamp"}, headers={"If-Match": '"1"'})
        assert ok.status_code == 200, ok.text
        current = assert_goods_body(ok.json(), order_id=3, name="desk lamp", version=2)

        stale = [
            Bad(f"stale If-Match {v}", ("if-match",), {"json": {"order_id": 9}, "headers": {"If-Match": v}})
            for v in ('"1"', '"3"', '"2147483647"')
        ]
        for case in stale:
            resp = await client.patch(url, **case.kwargs)
            assert resp.status_code == 412, resp.text
        await check_refusals(env, client, "PATCH", url, stale)
        assert (await client.get(url)).json() == current

        ok = await client.patch(url, json={"order_id": 9}, headers={"If-Match": '"2"'})
        assert ok.status_code == 200, ok.text
        assert_goods_body(ok.json(), order_id=9, name="desk lamp", version=3)

    events = await outbox_events(env)
    assert [e["aggregate_version"] for e in events] == [1, 2, 3]


async def test_patch_refusals(env: Env) -> None:
    async with env.client("goods") as client:
        created = await create(client)
        url = f"/v1/goods/{created['id']}"
        await check_refusals(env, client, "PATCH", url, BAD_PATCH)
        if_match = [
            Bad(f"If-Match {v!r}", ("if-match",), {"json": {"name": "x"}, "headers": {"If-Match": v}})
            for v in BAD_IF_MATCH
        ]
        await check_refusals(env, client, "PATCH", url, if_match)
        for bad in BAD_PATH_IDS:
            await check_refusals(
                env, client, "PATCH", f"/v1/goods/{bad}", [Bad(f"path {bad}", ("id",), {"json": {"name": "x"}})]
            )
        unknown = f"/v1/goods/{created['id'] + 1}"
        await check_refusals(env, client, "PATCH", unknown, [Bad("unknown id", ("id",), {"json": {"name": "x"}})])
        assert (await client.get(url)).json() == created


# -- DELETE ----------------------------------------------------------------------


async def test_delete(env: Env) -> None:
    async with env.client("goods") as client:
        keep = await create(client, order_id=1, name="keep")
        gone = await create(client, order_id=2, name="gone")
        moved = (await client.patch(f"/v1/goods/{gone['id']}", json={"order_id": 6})).json()
        resp = await client.delete(f"/v1/goods/{gone['id']}")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert (await client.get(f"/v1/goods/{gone['id']}")).status_code == 404
        assert (await client.get(f"/v1/goods/{keep['id']}")).json() == keep

        await check_refusals(env, client, "DELETE", f"/v1/goods/{gone['id']}", [Bad("deleted id", ("id",))])
        await check_refusals(
            env, client, "PATCH", f"/v1/goods/{gone['id']}", [Bad("deleted id", ("id",), {"json": {"name": "x"}})]
        )

    goods, _ = await snapshot(env, "goods")
    assert [r[0] for r in goods] == [keep["id"]]
    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_id"], e["aggregate_version"]) for e in events] == [
        ("goods.created", keep["id"], 1),
        ("goods.created", gone["id"], 1),
        ("goods.updated", gone["id"], 2),
        ("goods.deleted", gone["id"], moved["version"] + 1),
    ]
    deleted = events[-1]["data"]
    assert deleted["id"] == gone["id"]
    assert deleted["order_id"] == 6  # the last order, so that order-history can uncount it
