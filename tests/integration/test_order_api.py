"""Contract tests of the order API (SPEC.md, "order API" and "Errors").

Every accepted write is checked against the database (entity row and one outbox
row); every refused write is checked to have written nothing at all.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from tests.harness import Env

ORDER_KEYS = {"id", "user_id", "created_at", "updated_at", "version"}
ERROR_STATUSES = {400, 404, 409, 412, 422}
MAX_ID = 2**63 - 1
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE)
BAD_PATH_IDS = ["abc", "0", "-1", "99999999999999999999", str(MAX_ID + 1), "1.5"]


# -- helpers ---------------------------------------------------------------------


def parse_time(value: object) -> dt.datetime:
    """An RFC 3339 timestamp with a time zone."""
    assert isinstance(value, str), f"timestamp is not a string: {value!r}"
    assert RFC3339.match(value), f"not RFC 3339: {value!r}"
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"timestamp without time zone: {value!r}"
    return parsed


def assert_order_body(body: object, *, user_id: int, version: int) -> dict[str, Any]:
    assert isinstance(body, dict), body
    assert set(body) == ORDER_KEYS, f"order body keys {sorted(body)} != {sorted(ORDER_KEYS)}"
    assert isinstance(body["id"], int)
    assert 1 <= body["id"] <= MAX_ID
    assert type(body["user_id"]) is int
    assert body["user_id"] == user_id
    assert type(body["version"]) is int
    assert body["version"] == version
    created = parse_time(body["created_at"])
    updated = parse_time(body["updated_at"])
    assert updated >= created
    return body


def error_text(body: object) -> str:
    """Everything an error body says about which field is wrong."""
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    message = body.get("message")
    assert isinstance(message, str), f"error body without a message: {body!r}"
    assert message.strip()
    fields = body.get("fields", [])
    assert isinstance(fields, list), body
    names = [str(f.get("field", "")) for f in fields if isinstance(f, dict)]
    return " ".join([*names, message]).lower()


def refusal_problem(resp: httpx.Response, names: tuple[str, ...]) -> str | None:
    """None if `resp` is a proper refusal naming one of `names`; else what is wrong."""
    if resp.status_code not in ERROR_STATUSES:
        return f"status {resp.status_code} (want one of {sorted(ERROR_STATUSES)}): {resp.text[:300]}"
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {resp.headers.get('content-type')!r}, not JSON: {resp.text[:300]}"
    try:
        text = error_text(resp.json())
    except (AssertionError, json.JSONDecodeError) as exc:
        return f"malformed error body ({exc}): {resp.text[:300]}"
    if not any(n.lower() in text for n in names):
        return f"error body does not name {' or '.join(names)}: {resp.text[:300]}"
    return None


@dataclass(frozen=True)
class Bad:
    """One refused request: what to send, and the field the answer must name."""

    label: str
    names: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] | None = None


async def snapshot(env: Env, service: str = "order") -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of a command service's entity table and of its outbox."""
    pool = await env.pool(service)
    table = {"order": "orders", "goods": "goods"}[service]
    entities = await pool.fetch(f"SELECT * FROM {table} ORDER BY id")
    outbox = await pool.fetch(
        "SELECT id, event_id, topic, message_key, payload::text, created_at FROM outbox ORDER BY id"
    )
    return [tuple(r) for r in entities], [tuple(r) for r in outbox]


async def outbox_events(env: Env) -> list[dict[str, Any]]:
    pool = await env.pool("order")
    rows = await pool.fetch("SELECT topic, message_key, payload::text AS payload FROM outbox ORDER BY id")
    out = []
    for r in rows:
        assert r["topic"] == "order.events"
        event: dict[str, Any] = json.loads(r["payload"])
        assert r["message_key"] == str(event["aggregate_id"])
        out.append(event)
    return out


async def create(client: httpx.AsyncClient, user_id: int = 7) -> dict[str, Any]:
    resp = await client.post("/v1/order", json={"user_id": user_id})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def check_refusals(
    env: Env, client: httpx.AsyncClient, method: str, url: str, cases: list[Bad], *, service: str = "order"
) -> None:
    """Send every case; each must be a named 4xx that writes nothing. Reports all failures at once."""
    problems: list[str] = []
    for case in cases:
        before = await snapshot(env, service)
        resp = await client.request(method, url, params=case.params, **case.kwargs)
        problem = refusal_problem(resp, case.names)
        if problem:
            problems.append(f"{method} {url} [{case.label}]: {problem}")
        if await snapshot(env, service) != before:
            problems.append(f"{method} {url} [{case.label}]: refused with {resp.status_code} but wrote to the database")
    assert not problems, "\n".join(problems)


# Bodies that no write of an order accepts (POST and PATCH read the same field).
JSON = {"content-type": "application/json"}
BAD_BODIES = [
    Bad("missing user_id", ("user_id",), {"json": {}}),
    Bad("user_id null", ("user_id",), {"json": {"user_id": None}}),
    Bad("user_id string", ("user_id",), {"json": {"user_id": "7"}}),
    Bad("user_id true", ("user_id",), {"json": {"user_id": True}}),
    Bad("user_id false", ("user_id",), {"json": {"user_id": False}}),
    Bad("user_id float", ("user_id",), {"json": {"user_id": 1.5}}),
    Bad("user_id 7.5", ("user_id",), {"content": b'{"user_id": 7.5}', "headers": JSON}),
    Bad("user_id list", ("user_id",), {"json": {"user_id": [7]}}),
    Bad("user_id object", ("user_id",), {"json": {"user_id": {"id": 7}}}),
    Bad("user_id zero", ("user_id",), {"json": {"user_id": 0}}),
    Bad("user_id negative", ("user_id",), {"json": {"user_id": -1}}),
    Bad("user_id min int64", ("user_id",), {"json": {"user_id": -(2**63)}}),
    Bad("user_id 2**63", ("user_id",), {"json": {"user_id": MAX_ID + 1}}),
    Bad("user_id 2**64", ("user_id",), {"json": {"user_id": 2**64}}),
    Bad("user_id 20 digits", ("user_id",), {"content": b'{"user_id": 99999999999999999999}', "headers": JSON}),
    Bad("unknown extra field", ("colour",), {"json": {"user_id": 7, "colour": "red"}}),
    Bad("only an unknown field", ("user_id", "userid"), {"json": {"userId": 7}}),
    Bad("not JSON", ("body", "json"), {"content": b"{", "headers": JSON}),
    Bad("not JSON, trailing garbage", ("body", "json"), {"content": b'{"user_id": 7} x', "headers": JSON}),
    Bad("empty JSON body", ("body",), {"content": b"", "headers": JSON}),
    Bad("JSON array", ("body",), {"json": [{"user_id": 7}]}),
    Bad("JSON string", ("body",), {"json": "user_id=7"}),
    Bad("JSON null", ("body",), {"content": b"null", "headers": JSON}),
    Bad("JSON number", ("body",), {"content": b"7", "headers": JSON}),
    Bad("text/plain body", ("content-type",), {"content": b"user_id=7", "headers": {"content-type": "text/plain"}}),
    Bad(
        "XML body",
        ("content-type",),
        {"content": b"<user_id>7</user_id>", "headers": {"content-type": "application/xml"}},
    ),
    Bad("form missing userId", ("user_id", "userid"), {"data": {"uid": "7"}}),
    Bad("form userId empty", ("user_id", "userid"), {"data": {"userId": ""}}),
    Bad("form userId abc", ("user_id", "userid"), {"data": {"userId": "abc"}}),
    Bad("form userId 1.5", ("user_id", "userid"), {"data": {"userId": "1.5"}}),
    Bad("form userId 0", ("user_id", "userid"), {"data": {"userId": "0"}}),
    Bad("form userId -1", ("user_id", "userid"), {"data": {"userId": "-1"}}),
    Bad("form userId 2**63", ("user_id", "userid"), {"data": {"userId": str(MAX_ID + 1)}}),
    Bad("form userId 20 digits", ("user_id", "userid"), {"data": {"userId": "99999999999999999999"}}),
    Bad("query userId abc", ("user_id", "userid"), params={"userId": "abc"}),
    Bad("query userId 0", ("user_id", "userid"), params={"userId": "0"}),
    Bad("query userId -1", ("user_id", "userid"), params={"userId": "-1"}),
    Bad("query userId 2**63", ("user_id", "userid"), params={"userId": str(MAX_ID + 1)}),
    Bad("query userId true", ("user_id", "userid"), params={"userId": "true"}),
    Bad("no body, no query", ("user_id", "userid")),
]

BAD_IF_MATCH: list[str | bytes] = [
    '"abc"',
    "abc",
    '""',
    '"0"',
    '"-1"',
    '"1.5"',
    '"1", "2"',
    '"99999999999999999999"',
    '"1e3"',
    '" 1"',
]
# Quoted superscript digits (latin-1 bytes, as a client may send them): str.isdigit() says
# yes, int() says no. Kept apart from BAD_IF_MATCH so that this one bug fails one test.
SUPERSCRIPT_IF_MATCH: list[str | bytes] = [b'"\xb2"', b'"\xb9"', b'W/"\xb3"']


# -- POST ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["json", "json-integral-number", "form", "query", "form-with-other-fields"])
async def test_create(env: Env, how: str) -> None:
    ways: dict[str, dict[str, Any]] = {
        "json": {"json": {"user_id": 7}},
        # JSON Schema's "integer": a number with no fractional part, as the document says.
        "json-integral-number": {"content": b'{"user_id": 7.0}', "headers": JSON},
        # Form fields are read by their form names (userId); others are ignored, as by the original.
        "form-with-other-fields": {"data": {"userId": "7", "user_id": "99", "extra": "x"}},
        "form": {"data": {"userId": "7"}},
        "query": {"params": {"userId": "7"}},
    }
    kwargs = ways[how]
    async with env.client("order") as client:
        resp = await client.post("/v1/order", **kwargs)
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        body = assert_order_body(resp.json(), user_id=7, version=1)
        assert resp.headers["location"] == f"/v1/order/{body['id']}"
        assert body["created_at"] == body["updated_at"]

        fetched = await client.get(resp.headers["location"])
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == body

    pool = await env.pool("order")
    rows = await pool.fetch("SELECT id, user_id, version FROM orders")
    assert [tuple(r) for r in rows] == [(body["id"], 7, 1)]
    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_id"], e["aggregate_version"]) for e in events] == [
        ("order.created", body["id"], 1)
    ]
    assert events[0]["data"]["user_id"] == 7


async def test_create_assigns_distinct_ids(env: Env) -> None:
    async with env.client("order") as client:
        bodies = [await create(client, user_id=u) for u in (1, 2, 3, MAX_ID)]
    assert len({b["id"] for b in bodies}) == 4
    assert [b["user_id"] for b in bodies] == [1, 2, 3, MAX_ID]
    orders, outbox = await snapshot(env)
    assert len(orders) == 4
    assert len(outbox) == 4


async def test_create_refusals(env: Env) -> None:
    async with env.client("order") as client:
        await create(client)  # a non-empty table: refusals must not touch it either
        await check_refusals(env, client, "POST", "/v1/order", BAD_BODIES)


# -- GET -------------------------------------------------------------------------


async def test_get(env: Env) -> None:
    async with env.client("order") as client:
        created = await create(client, user_id=42)
        resp = await client.get(f"/v1/order/{created['id']}")
        assert resp.status_code == 200, resp.text
        assert assert_order_body(resp.json(), user_id=42, version=1) == created

        missing = await client.get(f"/v1/order/{created['id'] + 1}")
        assert missing.status_code == 404, missing.text
        assert refusal_problem(missing, ("id",)) is None, missing.text
        assert (await client.get(f"/v1/order/{MAX_ID}")).status_code == 404


async def test_get_bad_path_ids(env: Env) -> None:
    async with env.client("order") as client:
        await create(client)
        problems = []
        for bad in BAD_PATH_IDS:
            resp = await client.get(f"/v1/order/{bad}")
            problem = refusal_problem(resp, ("id",))
            if problem:
                problems.append(f"GET /v1/order/{bad}: {problem}")
        assert not problems, "\n".join(problems)


# -- PATCH -----------------------------------------------------------------------


async def test_patch(env: Env) -> None:
    async with env.client("order") as client:
        created = await create(client, user_id=7)
        resp = await client.patch(f"/v1/order/{created['id']}", json={"user_id": 8})
        assert resp.status_code == 200, resp.text
        body = assert_order_body(resp.json(), user_id=8, version=2)
        assert body["id"] == created["id"]
        assert body["created_at"] == created["created_at"]
        assert parse_time(body["updated_at"]) >= parse_time(created["updated_at"])

        again = await client.patch(f"/v1/order/{created['id']}", json={"user_id": 9})
        assert again.status_code == 200, again.text
        assert_order_body(again.json(), user_id=9, version=3)

        fetched = await client.get(f"/v1/order/{created['id']}")
        assert fetched.json() == again.json()

    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_version"], e["data"]["user_id"]) for e in events] == [
        ("order.created", 1, 7),
        ("order.updated", 2, 8),
        ("order.updated", 3, 9),
    ]


async def test_patch_if_match(env: Env) -> None:
    async with env.client("order") as client:
        created = await create(client, user_id=7)
        url = f"/v1/order/{created['id']}"

        ok = await client.patch(url, json={"user_id": 8}, headers={"If-Match": '"1"'})
        assert ok.status_code == 200, ok.text
        current = assert_order_body(ok.json(), user_id=8, version=2)

        for stale in ('"1"', '"3"', '"2147483647"'):
            before = await snapshot(env)
            resp = await client.patch(url, json={"user_id": 9}, headers={"If-Match": stale})
            assert resp.status_code == 412, resp.text
            assert refusal_problem(resp, ("if-match",)) is None, resp.text
            assert await snapshot(env) == before
            fetched = await client.get(url)
            assert fetched.status_code == 200
            assert fetched.json() == current

        ok = await client.patch(url, json={"user_id": 10}, headers={"If-Match": '"2"'})
        assert ok.status_code == 200, ok.text
        assert_order_body(ok.json(), user_id=10, version=3)

    events = await outbox_events(env)
    assert [e["aggregate_version"] for e in events] == [1, 2, 3]


async def test_patch_unknown_order(env: Env) -> None:
    async with env.client("order") as client:
        created = await create(client)
        cases = [Bad("unknown id", ("id",), {"json": {"user_id": 8}})]
        await check_refusals(env, client, "PATCH", f"/v1/order/{created['id'] + 1}", cases)
        cases = [Bad("unknown id with If-Match", ("id",), {"json": {"user_id": 8}, "headers": {"If-Match": '"1"'}})]
        await check_refusals(env, client, "PATCH", f"/v1/order/{created['id'] + 1}", cases)


async def test_patch_refusals(env: Env) -> None:
    async with env.client("order") as client:
        created = await create(client)
        url = f"/v1/order/{created['id']}"
        await check_refusals(env, client, "PATCH", url, BAD_BODIES)
        if_match = [
            Bad(f"If-Match {v!r}", ("if-match",), {"json": {"user_id": 8}, "headers": {"If-Match": v}})
            for v in BAD_IF_MATCH
        ]
        await check_refusals(env, client, "PATCH", url, if_match)
        for bad in BAD_PATH_IDS:
            await check_refusals(
                env, client, "PATCH", f"/v1/order/{bad}", [Bad(f"path {bad}", ("id",), {"json": {"user_id": 8}})]
            )
        # Nothing of all that changed the order.
        fetched = await client.get(url)
        assert fetched.json() == created


# -- DELETE ----------------------------------------------------------------------


async def test_delete(env: Env) -> None:
    async with env.client("order") as client:
        keep = await create(client, user_id=1)
        gone = await create(client, user_id=2)
        resp = await client.delete(f"/v1/order/{gone['id']}")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert (await client.get(f"/v1/order/{gone['id']}")).status_code == 404
        assert (await client.get(f"/v1/order/{keep['id']}")).json() == keep

        # Deleted is gone for every verb; nothing more is written.
        await check_refusals(env, client, "DELETE", f"/v1/order/{gone['id']}", [Bad("deleted id", ("id",))])
        await check_refusals(
            env, client, "PATCH", f"/v1/order/{gone['id']}", [Bad("deleted id", ("id",), {"json": {"user_id": 3}})]
        )

    orders, _ = await snapshot(env)
    assert [r[0] for r in orders] == [keep["id"]]
    events = await outbox_events(env)
    assert [(e["event_type"], e["aggregate_id"]) for e in events] == [
        ("order.created", keep["id"]),
        ("order.created", gone["id"]),
        ("order.deleted", gone["id"]),
    ]
    deleted = events[-1]
    assert deleted["aggregate_version"] == 2  # the version after the change
    assert deleted["data"]["id"] == gone["id"]


async def test_a_database_refusing_logins_gives_503_not_500(env: Env) -> None:
    """Not the client's fault: a retryable 503 with a JSON reason, and /readyz says so."""
    admin = await asyncpg.connect(env.stack.postgres.dsn("orders"))
    try:
        async with env.client("order") as client:
            await admin.execute("ALTER ROLE order_svc NOLOGIN")
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'order_svc'")
            response = await client.post("/v1/order", json={"user_id": 1})
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "unavailable"
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "reason" in ready.json()
    finally:
        await admin.execute("ALTER ROLE order_svc LOGIN")
        await admin.close()
        for pool in env.pools.values():
            pool.terminate()
        env.pools.clear()
