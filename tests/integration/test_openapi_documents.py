"""The OpenAPI documents say what the APIs accept and answer, against the real apps and database.

The fuzz stage (tests/e2e/test_fuzz_apis.py) takes every document at its word:
a value the document admits must be accepted, one it refuses must be refused,
every status must be listed. These tests pin the formats and bounds that were
once missing or wrong there (If-Match, ids past 2^53, cursors, Consistency-Token,
Prefer, timestamps, statuses), each checked against what the API does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any, cast

import pytest

from order_history.api import cursors
from shared import consistency
from shared.events import MAX_ID, MAX_VERSION
from tests.harness import Env

COMMAND_SERVICES = [("order", {"user_id": 7}, {"user_id": 8}), ("goods", {"order_id": 3}, {"name": "lamp"})]


async def document(env: Env, service: str) -> dict[str, Any]:
    async with env.client(service) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return cast(dict[str, Any], response.json())


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    found = [p for p in operation.get("parameters", []) if p["name"] == name]
    assert len(found) == 1, f"{name}: {[p['name'] for p in operation.get('parameters', [])]}"
    return cast(dict[str, Any], found[0])


def string_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The string alternative of an optional parameter's schema (FastAPI writes `anyOf [..., null]`)."""
    strings = [s for s in schema.get("anyOf", [schema]) if s.get("type") == "string"]
    assert len(strings) == 1, schema
    return cast(dict[str, Any], strings[0])


def admits(pattern: str, value: str) -> bool:
    """Whether a document's pattern (the ECMA subset Python's `re` reads alike) matches `value`."""
    return re.search(pattern, value) is not None


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}/{i}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


# -- ids: exact 64-bit bounds ----------------------------------------------------------------


@pytest.mark.parametrize("service", ["order", "goods", "order_history"])
async def test_every_number_in_the_document_is_exact(env: Env, service: str) -> None:
    """A float cannot hold 2^63-1: a bound written as one admits ids the API refuses."""
    floats = [(path, n) for path, n in numbers(await document(env, service)) if isinstance(n, float)]
    assert floats == []


@pytest.mark.parametrize(
    ("service", "field", "form_field"), [("order", "user_id", "userId"), ("goods", "order_id", "orderId")]
)
async def test_a_creates_ids_are_bounded_as_the_api_bounds_them(
    env: Env, service: str, field: str, form_field: str
) -> None:
    content = (await document(env, service))["paths"][f"/v1/{service}"]["post"]["requestBody"]["content"]
    for media_type, name in (("application/json", field), ("application/x-www-form-urlencoded", form_field)):
        schema = content[media_type]["schema"]["properties"][name]
        assert (schema["type"], schema["minimum"], schema["maximum"]) == ("integer", 1, MAX_ID), media_type
    async with env.client(service) as client:
        over = await client.post(f"/v1/{service}", data={form_field: str(MAX_ID + 1)})
        assert over.status_code == 422, over.text
        assert [f["field"] for f in over.json()["fields"]] == [form_field]


# -- If-Match --------------------------------------------------------------------------------

IF_MATCH_ADMITTED = ['"2"', "2", "*", ' "2"\t', 'W/"1"', "W/x", f'"{MAX_VERSION}"', str(MAX_VERSION)]
IF_MATCH_REFUSED = ["0", '"0"', '"02"', "02", f'"{MAX_VERSION + 1}"', '"2', '2"', '""', '"1", "2"', '"abc"', ""]


@pytest.mark.parametrize(("service", "body", "change"), COMMAND_SERVICES)
async def test_the_if_match_pattern_admits_what_the_api_reads(
    env: Env, service: str, body: dict[str, Any], change: dict[str, Any]
) -> None:
    paths = (await document(env, service))["paths"][f"/v1/{service}/{{{service}_id}}"]
    for method in ("patch", "delete"):
        schema = parameter(paths[method], "If-Match")["schema"]
        assert schema["type"] == "string" and schema["pattern"].startswith("^") and schema["pattern"].endswith("$")
    pattern = parameter(paths["patch"], "If-Match")["schema"]["pattern"]
    assert [v for v in IF_MATCH_ADMITTED if not admits(pattern, v)] == []
    assert [v for v in IF_MATCH_REFUSED if admits(pattern, v)] == []
    async with env.client(service) as client:
        created = await client.post(f"/v1/{service}", json=body)
        assert created.status_code == 201, created.text
        url = f"/v1/{service}/{created.json()['id']}"
        for value in IF_MATCH_ADMITTED:
            response = await client.patch(url, json=change, headers={"If-Match": value})
            assert response.status_code in (200, 412), (value, response.text)
        for value in IF_MATCH_REFUSED:
            response = await client.patch(url, json=change, headers={"If-Match": value})
            assert response.status_code == 400, (value, response.text)
            assert [f["field"] for f in response.json()["fields"]] == ["If-Match"]


# -- statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["order", "goods"])
async def test_every_status_a_command_operation_answers_is_listed(env: Env, service: str) -> None:
    paths = (await document(env, service))["paths"]
    one = paths[f"/v1/{service}/{{{service}_id}}"]
    listed = {
        "POST": set(paths[f"/v1/{service}"]["post"]["responses"]),
        "GET": set(one["get"]["responses"]),
        "PATCH": set(one["patch"]["responses"]),
        "DELETE": set(one["delete"]["responses"]),
    }
    # 412: If-Match; 413: a body over the limit, refused before any route reads it, on every operation.
    assert listed == {
        "POST": {"201", "400", "413", "422", "503"},
        "GET": {"200", "400", "404", "413", "422", "503"},
        "PATCH": {"200", "400", "404", "412", "413", "422", "503"},
        "DELETE": {"204", "400", "404", "412", "413", "422", "503"},
    }


async def test_every_status_an_order_history_read_answers_is_listed(env: Env) -> None:
    paths = (await document(env, "order_history"))["paths"]
    listing = paths["/v1/order-history"]["get"]["responses"]
    detail = paths["/v1/order-history/{order_id}"]["get"]["responses"]
    assert set(listing) == {"200", "400", "412", "413", "422", "503"}  # no id: no 404
    assert set(detail) == {"200", "400", "404", "412", "413", "422", "503"}
    assert "Consistency-Token" in listing["412"]["description"] and "cursor" in listing["422"]["description"]


async def test_a_too_large_body_is_a_413_even_where_no_body_is_read(env: Env) -> None:
    async with env.client("order") as client:
        response = await client.request("DELETE", "/v1/order/1", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413, response.text


# -- cursors ---------------------------------------------------------------------------------


async def test_a_cursor_is_documented_by_its_exact_shape_and_a_shaped_one_not_made_here_is_a_422(env: Env) -> None:
    doc = await document(env, "order_history")
    schema = string_schema(parameter(doc["paths"]["/v1/order-history"]["get"], "cursor")["schema"])
    assert (schema["minLength"], schema["maxLength"], schema["pattern"]) == (
        cursors.LENGTH,
        cursors.LENGTH,
        cursors.PATTERN,
    )
    out = string_schema(doc["components"]["schemas"]["HistoryPage"]["properties"]["next_cursor"])
    assert out["pattern"] == cursors.PATTERN

    pool = await env.pool("order_history")
    now = dt.datetime.now(dt.UTC)
    await pool.executemany(
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, deleted, goods_count)
           VALUES ($1, 1, $2, $2, 1, true, false, 1)""",
        [(i, now) for i in (1, 2)],
    )
    async with env.client("order_history") as client:
        first = await client.get("/v1/order-history", params={"limit": 1})
        assert first.status_code == 200, first.text
        made = first.json()["next_cursor"]
        assert admits(cursors.PATTERN, made) and len(made) == cursors.LENGTH
        assert (await client.get("/v1/order-history", params={"limit": 1, "cursor": made})).status_code == 200
        # The documented shape, but not signed here: valid to the schema, refused by its documented 422.
        shaped = "A" * cursors.LENGTH
        assert admits(cursors.PATTERN, shaped)
        for cursor in (shaped, made[:-1] + ("A" if made[-1] != "A" else "E")):
            response = await client.get("/v1/order-history", params={"cursor": cursor})
            assert response.status_code == 422, response.text
            assert [f["field"] for f in response.json()["fields"]] == ["cursor"]
        # Out of shape (a length, a character, unused bits set): refused by the schema and the API alike.
        for cursor in (
            "0",
            "A" * (cursors.LENGTH + 1),
            "A" * (cursors.LENGTH - 1) + "=",
            "A" * (cursors.LENGTH - 1) + "B",
        ):
            assert not admits(cursors.PATTERN, cursor)
            response = await client.get("/v1/order-history", params={"cursor": cursor})
            assert response.status_code == 422, response.text


# -- Consistency-Token and Prefer ------------------------------------------------------------


async def test_the_consistency_token_is_documented_by_its_format_on_both_sides(env: Env) -> None:
    doc = await document(env, "order_history")
    for path in ("/v1/order-history", "/v1/order-history/{order_id}"):
        schema = parameter(doc["paths"][path]["get"], consistency.HEADER)["schema"]
        assert schema == {
            "type": "string",
            "format": consistency.FORMAT,
            "pattern": consistency.PATTERN,
            "maxLength": consistency.MAX_LENGTH,
        }
    order_doc = await document(env, "order")
    written = order_doc["paths"]["/v1/order"]["post"]["responses"]["201"]["headers"][consistency.HEADER]["schema"]
    assert written["pattern"] == consistency.TOKEN_PATTERN
    async with env.client("order") as client:
        created = await client.post("/v1/order", json={"user_id": 7})
    token = created.headers[consistency.HEADER]
    assert admits(consistency.TOKEN_PATTERN, token) and admits(consistency.PATTERN, f"{token} ,\t{token}")
    assert not admits(consistency.PATTERN, "0") and not admits(consistency.PATTERN, f"{token},")


async def test_prefer_is_documented_as_any_value_since_the_api_ignores_what_it_does_not_know(env: Env) -> None:
    doc = await document(env, "order_history")
    prefer = parameter(doc["paths"]["/v1/order-history/{order_id}"]["get"], "Prefer")
    assert "wait=N" in prefer["description"] and "pattern" not in prefer["schema"]
    async with env.client("order_history") as client:
        for value in ("wait=0", "wait=abc", "respond-async, wait=1", "", "?"):
            response = await client.get("/v1/order-history", headers={"Prefer": value})
            assert response.status_code == 200, (value, response.text)


# -- timestamps ------------------------------------------------------------------------------

TIMES_ADMITTED = ["2026-12-01T00:00:00Z", "2026-12-01t00:00:00.123456789z", "0001-01-01T00:00:00+23:59"]
# A Unix time, a space for the T, no seconds, a zone without its colon, a leap second, year 0, no zone.
TIMES_REFUSED = [
    "0.5",
    "1700000000",
    "2026-12-01 00:00:00Z",
    "2026-12-01T00:00Z",
    "2026-12-01T00:00:00+0100",
    "2016-12-31T23:59:60Z",
    "0000-01-01T00:00:00Z",
    "2026-12-01T00:00:00",
]


async def test_timestamps_are_rfc_3339_in_the_document_and_in_the_api(env: Env) -> None:
    doc = await document(env, "order_history")
    operation = doc["paths"]["/v1/order-history"]["get"]
    for name in ("created_from", "created_to"):
        schema = string_schema(parameter(operation, name)["schema"])
        assert schema["format"] == "date-time"
        assert [v for v in TIMES_ADMITTED if not admits(schema["pattern"], v)] == []
        assert [v for v in TIMES_REFUSED if admits(schema["pattern"], v)] == []
    async with env.client("order_history") as client:
        for value in TIMES_ADMITTED:
            response = await client.get("/v1/order-history", params={"created_from": value})
            assert response.status_code == 200, (value, response.text)
        for value in TIMES_REFUSED:
            response = await client.get("/v1/order-history", params={"created_to": value})
            assert response.status_code == 422, (value, response.text)
            assert [f["field"] for f in response.json()["fields"]] == ["created_to"]
