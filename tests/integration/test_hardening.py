"""Hostile or careless clients: bodies over the limit, error bodies that stay small, 405 with
Allow, /readyz that names no host or role, form writes refused when the service is told to."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import orjson
import pytest

from shared.http.errors import MAX_FIELD_ERRORS
from shared.http.limits import MAX_BODY_BYTES
from tests.harness import Env, wait_until


async def _order_api(env: Env) -> int:
    env.process("order-api", "order", "api").start()
    port = env.stack.config.order_port

    async def ready() -> bool:
        async with env.http("order") as client:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

    await wait_until(ready, 60, "the order API")
    return port


def _answer_while_sending(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send the request head and `chunks`, never the rest, and read the answer: a server that
    waited for the whole body would never answer (the socket's timeout fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + 10:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.slow
async def test_a_body_over_the_limit_is_refused_413_without_being_read(env: Env) -> None:
    port = await _order_api(env)
    declared = 29 * 1024 * 1024
    head = (
        f"POST /v1/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    answer = await asyncio.to_thread(_answer_while_sending, port, head, [b'{"user_id": 1, "x": "' + b"a" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer

    chunked = (
        b"POST /v1/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (MAX_BODY_BYTES // len(piece) + 2)
    answer = await asyncio.to_thread(_answer_while_sending, port, chunked, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    pool = await env.pool("order")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    async with env.http("order") as client:  # and the API still serves
        assert (await client.post("/v1/order", json={"user_id": 1})).status_code == 201


async def test_error_bodies_do_not_grow_with_the_input(env: Env) -> None:
    unknown = {f"key{i}": i for i in range(60_000)}  # just under the body limit
    body = orjson.dumps({"user_id": 1, **unknown})
    assert len(body) < MAX_BODY_BYTES
    async with env.client("order") as client:
        response = await client.post("/v1/order", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert len(response.content) < 5000
        assert len(response.json()["fields"]) == MAX_FIELD_ERRORS
        assert response.json()["message"].endswith(f"and {len(unknown) - MAX_FIELD_ERRORS} more")

        long_key = {"x" * 500_000: 1}
        response = await client.post("/v1/order", json=long_key)
        assert response.status_code == 422 and len(response.content) < 2000

        query = "&".join(f"p{i}=1" for i in range(2000))
        response = await client.get(f"/v1/order-history?{query}")  # unknown path here: 404, small
        assert len(response.content) < 2000
    async with env.client("order_history") as history:
        response = await history.get(f"/v1/order-history?{query}")
        assert response.status_code == 422
        assert len(response.json()["fields"]) == MAX_FIELD_ERRORS
    pool = await env.pool("order")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_405_names_the_allowed_methods(env: Env) -> None:
    async with env.client("order") as client:
        response = await client.put("/v1/order/1", json={"user_id": 1})
        assert response.status_code == 405
        assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "PATCH", "DELETE"}
        response = await client.delete("/v1/order")
        assert response.status_code == 405 and "POST" in response.headers["allow"]


async def test_readyz_says_what_is_unavailable_and_nothing_about_hosts_or_roles(env: Env) -> None:
    async with env.client("order", database_url="postgresql://order_svc:wrong@127.0.0.1:1/orders") as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["unavailable"] == ["database"]
    for secret in ("127.0.0.1", "order_svc", ":1", "wrong"):
        assert secret not in ready.text


async def test_form_writes_can_be_refused(env: Env) -> None:
    async with env.client("order", accept_form_writes=False) as client:
        # A form, query fields, and a JSON-looking body without a content type (which a
        # browser can send cross-site without a preflight): all refused.
        ways: list[dict[str, Any]] = [
            {"data": {"userId": "7"}},
            {"params": {"userId": "7"}},
            {"content": b'{"user_id": 7}', "headers": {"content-type": ""}},
        ]
        for kwargs in ways:
            response = await client.post("/v1/order", **kwargs)
            assert response.status_code == 400
            assert response.json()["error"] == "json_only"
        assert (await client.post("/v1/order", json={"user_id": 7})).status_code == 201
    pool = await env.pool("order")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
