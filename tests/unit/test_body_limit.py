"""BodyLimit at the ASGI level: the 413 goes out before any read, then the lingering close keeps its bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from shared.http.limits import BodyLimit, BodyTooLarge

LIMIT = 1000
# Generous: a lingering close that ignored its bounds would hang here instead of failing.
HANG = 30.0


def _scope(headers: Iterable[tuple[bytes, bytes]] = ()) -> Scope:
    return {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}


class Peer:
    """The server side of one request: the body parts to deliver, and a log of what happened in order."""

    def __init__(self, parts: Iterable[bytes] = (), endless: bool = False, silent: bool = False) -> None:
        self.parts = list(parts)
        self.endless = endless  # after the parts, more body forever
        self.silent = silent  # after the parts, nothing ever arrives
        self.log: list[tuple[str, Any]] = []

    async def receive(self) -> Message:
        if self.parts:
            part = self.parts.pop(0)
            self.log.append(("receive", len(part)))
            return {"type": "http.request", "body": part, "more_body": bool(self.parts) or self.endless}
        if self.silent:
            await asyncio.Event().wait()
        if self.endless:
            self.log.append(("receive", 100))
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}
        raise AssertionError("read past the end of the body")

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.log.append(("start", (message["status"], dict(message["headers"]))))
        else:
            self.log.append(("body", (message.get("body", b""), message.get("more_body", False))))

    def sent(self) -> list[tuple[str, Any]]:
        return [entry for entry in self.log if entry[0] != "receive"]

    def received(self) -> int:
        return sum(size for kind, size in self.log if kind == "receive")


async def reads_all(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body and answers 200; a body over the limit answers 413 (the error handler)."""
    try:
        while (await receive()).get("more_body", False):
            pass
    except BodyTooLarge as exc:
        body = orjson.dumps({"error": "body_too_large", "message": str(exc), "fields": []})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _run(limit: BodyLimit, scope: Scope, peer: Peer) -> None:
    await asyncio.wait_for(limit(scope, peer.receive, peer.send), HANG)


async def test_a_declared_length_over_the_limit_is_answered_before_any_read_then_the_body_is_dropped() -> None:
    peer = Peer([b"x" * 600] * 5)
    await _run(BodyLimit(reads_all, LIMIT), _scope([(b"content-length", b"3000")]), peer)
    kinds = [kind for kind, _ in peer.log]
    assert kinds[:2] == ["start", "body"], peer.log  # the answer, before anything is read
    status, headers = peer.log[0][1]
    assert status == 413 and headers[b"connection"] == b"close"
    body, more = peer.log[1][1]
    assert more and int(headers[b"content-length"]) == len(body)
    assert orjson.loads(body)["error"] == "body_too_large"
    assert peer.received() == 3000  # the rest, to its end
    assert peer.log[-1] == ("body", (b"", False))  # the response ends (and the server closes) only then


async def test_the_lingering_close_drops_no_more_than_its_bytes() -> None:
    peer = Peer(endless=True)
    await _run(BodyLimit(reads_all, LIMIT, linger_bytes=5000), _scope([(b"content-length", b"9999999")]), peer)
    assert 5000 <= peer.received() <= 5000 + 100
    assert peer.log[-1] == ("body", (b"", False))


async def test_the_lingering_close_waits_no_longer_than_its_time_for_a_body_that_never_comes() -> None:
    peer = Peer(silent=True)
    await _run(BodyLimit(reads_all, LIMIT, linger_seconds=0.01), _scope([(b"content-length", b"9999999")]), peer)
    assert [kind for kind, _ in peer.log] == ["start", "body", "body"]
    assert peer.log[-1] == ("body", (b"", False))


async def test_a_chunked_body_over_the_limit_gets_the_apps_413_with_close_and_its_rest_dropped() -> None:
    peer = Peer([b"x" * 600] * 5)
    await _run(BodyLimit(reads_all, LIMIT), _scope(), peer)
    status, headers = peer.sent()[0][1]
    assert status == 413 and headers[b"connection"] == b"close"
    assert peer.sent()[1][1][1] is True  # the whole answer, the response still open
    assert peer.received() == 3000
    assert peer.log[-1] == ("body", (b"", False))


async def test_a_chunked_body_that_ends_on_the_read_over_the_limit_is_not_read_again() -> None:
    peer = Peer([b"x" * 600, b"x" * 600])  # the read that passes the limit is the last
    await _run(BodyLimit(reads_all, LIMIT), _scope(), peer)  # a read past the end fails in Peer
    assert peer.received() == 1200
    assert peer.sent()[0][1][0] == 413
    assert peer.log[-1] == ("body", (b"", False))


async def test_a_body_within_the_limit_passes_untouched() -> None:
    for headers in ([(b"content-length", b"1000")], []):
        peer = Peer([b"x" * 500, b"x" * 500])
        await _run(BodyLimit(reads_all, LIMIT), _scope(headers), peer)
        assert peer.sent() == [("start", (200, {b"content-length": b"0"})), ("body", (b"", False))]
