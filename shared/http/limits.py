"""Request bodies over MAX_BODY_BYTES are refused with 413, without reading the rest.

A pure ASGI middleware, ahead of everything else: a `Content-Length` over the
limit is answered at once (the body is never read), one within it passes
untouched; a body without one (chunked) is counted as it streams in, and the
read that passes the limit raises `BodyTooLarge`, which the error handlers turn
into the same 413.
"""

from __future__ import annotations

from typing import Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES: Final = 1024 * 1024


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    await _refuse(send, 400, "invalid_content_length", "Content-Length must be a number of bytes")
                    return
                if int(value) > self.limit:
                    await _refuse(send, 413, "body_too_large", str(BodyTooLarge(self.limit)))
                    return
                # The server reads no more than Content-Length bytes as this request's body
                # (h11 and httptools frame by it, and refuse it beside Transfer-Encoding):
                # nothing left to count.
                await self.app(scope, receive, send)
                return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": code, "message": message, "fields": [{"field": "body", "message": message}]})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            # The body is left unread: the connection cannot carry another request.
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
