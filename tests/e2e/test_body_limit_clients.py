"""A body over the limit, sent by the common HTTP clients to a real uvicorn process: each reads the 413.

The server answers before reading the body, then reads and drops the rest of it
(within bounds) before closing, so that no client, still sending, has its
connection reset under the answer (see `shared/http/limits.py`). Every body
here would be a valid order without the limit: nothing may be written.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import httpx
import orjson
import pytest
import requests

from shared.http.limits import LINGER_SECONDS, MAX_BODY_BYTES
from tests.harness import Env, wait_until

BODY_BYTES = 4 * 1024 * 1024
PIECE = 64 * 1024
# Valid JSON, and a valid order but for its size: only the limit refuses it.
BODY = b'{"user_id": 1' + b" " * (BODY_BYTES - len(b'{"user_id": 1}')) + b"}"
JSON = {"content-type": "application/json"}
TRIES = 3  # the reset this guards against came on every try; a few tries catch a race too
# Generous: how long a refused connection may stay open, far beyond the documented bound.
CLOSED_WITHIN = 30.0

Answer = tuple[int, str | None, bytes]  # status, Connection header, body
Send = Callable[[str, bool], Awaitable[Answer]]  # (url, streamed) -> answer


def pieces() -> Iterator[bytes]:
    """BODY in pieces: a body without Content-Length, sent chunked."""
    for start in range(0, len(BODY), PIECE):
        yield BODY[start : start + PIECE]


async def async_pieces() -> AsyncIterator[bytes]:
    for piece in pieces():
        yield piece


async def httpx_async(url: str, streamed: bool) -> Answer:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url, content=async_pieces() if streamed else BODY, headers=JSON)
        return response.status_code, response.headers.get("connection"), response.content


def _httpx_sync(url: str, streamed: bool) -> Answer:
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=pieces() if streamed else BODY, headers=JSON)
        return response.status_code, response.headers.get("connection"), response.content


async def httpx_sync(url: str, streamed: bool) -> Answer:
    return await asyncio.to_thread(_httpx_sync, url, streamed)


def _requests(url: str, streamed: bool) -> Answer:
    with requests.Session() as session:
        response = session.post(url, data=pieces() if streamed else BODY, headers=JSON, timeout=30)
        return response.status_code, response.headers.get("connection"), response.content


async def requests_sync(url: str, streamed: bool) -> Answer:
    return await asyncio.to_thread(_requests, url, streamed)


async def aiohttp_async(url: str, streamed: bool) -> Answer:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(url, data=async_pieces() if streamed else BODY, headers=JSON) as response,
    ):
        return response.status, response.headers.get("connection"), await response.read()


async def _order_api(env: Env) -> str:
    env.process("order-api", "order", "api").start()

    async def ready() -> bool:
        async with env.http("order") as client:
            try:
                return (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

    await wait_until(ready, 60, "the order API")
    return f"http://127.0.0.1:{env.stack.config.order_port}/v1/order"


async def _assert_nothing_written(env: Env) -> None:
    pool = await env.pool("order")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


def _assert_refused(answer: Answer, what: str) -> None:
    status, connection, body = answer
    assert status == 413, f"{what}: {status} {body[:200]!r}"
    assert connection is not None and connection.lower() == "close", what
    error = orjson.loads(body)
    assert error["error"] == "body_too_large", what
    assert error["message"] == f"the request body is larger than {MAX_BODY_BYTES} bytes", what
    assert error["fields"] == [{"field": "body", "message": error["message"]}], what


@pytest.mark.parametrize(
    "send",
    [httpx_async, httpx_sync, requests_sync, aiohttp_async],
    ids=["httpx-async", "httpx-sync", "requests", "aiohttp"],
)
async def test_each_client_reads_the_413_of_a_body_over_the_limit(env: Env, send: Send) -> None:
    url = await _order_api(env)
    for streamed in (False, True):
        for attempt in range(1, TRIES + 1):
            what = f"{'chunked' if streamed else 'Content-Length'} body, try {attempt}"
            try:
                answer = await send(url, streamed)
            except (httpx.HTTPError, requests.RequestException, aiohttp.ClientError) as exc:
                pytest.fail(f"{what}: {exc!r}")
            _assert_refused(answer, what)
    await _assert_nothing_written(env)
    async with env.http("order") as client:  # and the API still serves
        assert (await client.post("/v1/order", json={"user_id": 1})).status_code == 201


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one answer with Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole body: {body!r}"
        body += chunk
    return head, body


def _head(length: int) -> bytes:
    return (
        f"POST /v1/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _never_sends_the_body(port: int) -> tuple[bytes, bytes, float]:
    """The head alone: the answer, and the seconds from it until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN) as sock:
        sock.sendall(_head(BODY_BYTES))
        head, body = _read_answer(sock)  # the socket's timeout fails a server that waits for the body
        answered = time.monotonic()
        rest = sock.recv(65536)  # the server closes after its bound; the timeout fails one that does not
        assert rest == b"", rest[:200]
        return head, body, time.monotonic() - answered


def _sends_the_body_after_the_answer(port: int) -> tuple[bytes, bytes]:
    """The head, the answer, then the whole body: the server reads it and closes without a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLOSED_WITHIN) as sock:
        sock.sendall(_head(len(BODY)))
        head, body = _read_answer(sock)
        sock.sendall(BODY)
        assert sock.recv(65536) == b""  # a reset would raise ConnectionResetError here
        return head, body


async def test_a_client_that_never_sends_the_body_gets_the_413_and_is_closed_within_the_bound(env: Env) -> None:
    url = await _order_api(env)
    port = env.stack.config.order_port
    head, body, closed_after = await asyncio.to_thread(_never_sends_the_body, port)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"connection: close" in head.lower(), head
    _assert_refused((413, "close", body), "no body sent")
    assert closed_after < CLOSED_WITHIN, f"closed {closed_after:.1f}s after the answer (bound {LINGER_SECONDS}s)"

    head, body = await asyncio.to_thread(_sends_the_body_after_the_answer, port)
    assert head.startswith(b"HTTP/1.1 413"), head
    _assert_refused((413, "close", body), "body sent after the answer")

    await _assert_nothing_written(env)
    async with httpx.AsyncClient(timeout=30) as client:  # and the API still serves
        assert (await client.post(url, json={"user_id": 1})).status_code == 201
