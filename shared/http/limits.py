"""Request bodies over MAX_BODY_BYTES are refused with 413, without reading the rest.

A pure ASGI middleware, ahead of everything else: a `Content-Length` over the
limit is answered at once (the body is never read), one within it passes
untouched; a body without one (chunked) is counted as it streams in, and the
read that passes the limit raises `BodyTooLarge`, which the error handlers turn
into the same 413.

A refused request's connection is closed after its answer, but not at once (a
lingering close, as nginx does). A socket closed with request bytes still
unread, or still arriving, makes the kernel reset the connection; a client
still sending its body then loses the answer waiting in its receive buffer (an
asyncio client such as httpx's `AsyncClient` drops the connection, unread data
and all, as soon as a write fails). So the answer goes out whole first, with
`Connection: close`; then what is left of the body is read and dropped until it
ends, the client goes away, or `linger_seconds` or `linger_bytes` run out; only
then does the response end, and the server closes the connection. A client
that never sends its body holds the connection no longer than `linger_seconds`.
"""

from __future__ import annotations

import asyncio
from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES: Final = 1024 * 1024
# The bounds of the lingering close: time from the answer, and bytes dropped.
LINGER_SECONDS: Final = 5.0
LINGER_BYTES: Final = 32 * 1024 * 1024

_CLOSE: Final = (b"connection", b"close")


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        linger_seconds: float = LINGER_SECONDS,
        linger_bytes: int = LINGER_BYTES,
    ) -> None:
        self.app = app
        self.limit = limit
        self.linger_seconds = linger_seconds
        self.linger_bytes = linger_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    # The server cannot tell where such a body ends: nothing to linger for.
                    await _refuse(send, 400, "invalid_content_length", "Content-Length must be a number of bytes")
                    return
                if int(value) > self.limit:
                    await _refuse(send, 413, "body_too_large", str(BodyTooLarge(self.limit)), more_body=True)
                    await self._linger(receive)
                    await send({"type": "http.response.body", "body": b""})
                    return
                # The server reads no more than Content-Length bytes as this request's body
                # (h11 and httptools frame by it, and refuse it beside Transfer-Encoding):
                # nothing left to count.
                await self.app(scope, receive, send)
                return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        tripped = False  # the limit was passed: whatever the app answers closes the connection
        ended = False  # the server has delivered the whole body, or the client has gone

        async def counted() -> Message:
            nonlocal received, tripped, ended
            message = await receive()
            ended = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    tripped = True
                    raise BodyTooLarge(self.limit)
            return message

        async def closing(message: Message) -> None:
            if tripped and message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if _CLOSE not in headers:
                    headers.append(_CLOSE)
                message = {**message, "headers": headers}
            elif tripped and message["type"] == "http.response.body" and not message.get("more_body", False):
                # The answer goes out whole; the server ends the response (and closes) on the
                # empty last part, after the rest of the body is dropped.
                await send({**message, "more_body": True})
                if not ended:
                    await self._linger(receive)
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app(scope, counted, closing)

    async def _linger(self, receive: Receive) -> None:
        """Read and drop the rest of the request body, within the bounds (see the module's doc)."""
        dropped = 0
        try:
            async with asyncio.timeout(self.linger_seconds):
                while dropped <= self.linger_bytes:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
                    dropped += len(message.get("body", b""))
        except TimeoutError:
            return


async def _refuse(send: Send, status: int, code: str, message: str, more_body: bool = False) -> None:
    """Answer with an error body; with `more_body` the caller ends the response (after lingering)."""
    body = orjson.dumps({"error": code, "message": message, "fields": [{"field": "body", "message": message}]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            # The body is left unread: the connection cannot carry another request. The length
            # lets the client read the whole answer before the response ends.
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                _CLOSE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": more_body})
