"""The app factory of the three APIs: a database pool, the error handlers, the body limit,
health endpoints, and routes served directly by Starlette where asked for."""

from __future__ import annotations

import copy
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from shared.command.outbox import NOTIFY_CHANNEL
from shared.database import create_pool, ping
from shared.http.errors import install_error_handlers
from shared.http.limits import BodyLimit
from shared.http.metrics import RequestMetrics, ScrapeGauges, metrics_endpoint
from shared.notify import Notifier

log = logging.getLogger(__name__)


_NO_TELEMETRY: Final[TelemetryConfig] = {"tracing": False, "metrics": False, "logs": False}


def health_router(get_pool: Callable[[], asyncpg.Pool]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz", responses={503: {"description": "a dependency is not reachable"}})
    async def readyz() -> JSONResponse:
        reason = await ping(get_pool())
        if reason is not None:
            # The driver's words (hosts, roles) go to the log, not to whoever asks.
            log.warning("not ready", extra={"dependency": "database", "error": reason})
            body = {"status": "unavailable", "unavailable": ["database"], "reason": "the database does not answer"}
            return JSONResponse(status_code=503, content=body)
        return JSONResponse(status_code=200, content={"status": "ready"})

    return router


def create_service_app(
    *,
    title: str,
    database_url: str,
    routers: Sequence[APIRouter],
    direct_routes: Sequence[BaseRoute] = (),
    pool_size: int = 10,
    acquire_timeout: float = 5.0,
    session_settings: Mapping[str, str] | None = None,
    outbox: bool = False,
    state: Callable[[asyncpg.Pool], Mapping[str, object]] | None = None,
    freeze_heap: bool = False,
    scrape_gauges: ScrapeGauges | None = None,
) -> FastAPI:
    """A FastAPI app with a database pool in `app.state.pool`, errors and health endpoints.

    `direct_routes` are plain Starlette routes put ahead of FastAPI's (see
    `shared.command.api`): the same endpoints, inside the same middleware and
    error handlers, without FastAPI's request handler; FastAPI's routes of the
    same paths stay for the OpenAPI document.
    `state(pool)` names more objects built on the pool (a service's batchers), set on `app.state`;
    those with an `aclose()` are closed at shutdown, before the pool.
    `GET /metrics` serves the request metrics (`shared.http.metrics`) and `scrape_gauges`.
    `freeze_heap`: for the app of a server process (not of a test), keep everything
    built at startup out of the cyclic collector's passes (see the lifespan).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(
            database_url, max_size=pool_size, acquire_timeout=acquire_timeout, session_settings=session_settings
        )
        extra = state(app.state.pool) if state else {}
        for name, value in extra.items():
            setattr(app.state, name, value)
        app.state.outbox_notifier = Notifier(app.state.pool, NOTIFY_CHANNEL) if outbox else None
        if app.state.outbox_notifier is not None:
            app.state.outbox_notifier.start()
        if freeze_heap:
            # Everything built so far (modules, the app, pydantic's validators) lives as
            # long as the process: keep it out of the cyclic collector's full passes,
            # which would otherwise rescan it every few hundred requests.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if app.state.outbox_notifier is not None:
                await app.state.outbox_notifier.stop()
            for value in extra.values():
                close = getattr(value, "aclose", None)
                if close is not None:
                    await close()
            await app.state.pool.close()

    # The APIs' metrics are Prometheus's (RequestMetrics); FastAPI's OpenTelemetry
    # bridge, left on, would look up the global providers on every request.
    app = FastAPI(title=title, lifespan=lifespan, telemetry=_NO_TELEMETRY)
    install_error_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics)  # outermost: it also counts what the others answer
    # The routers' routes go straight into the app's router (their paths are whole),
    # so the request metrics find each endpoint's template there.
    for router in (health_router(lambda: app.state.pool), *routers):
        app.router.routes.extend(router.routes)
    metrics = Route("/metrics", metrics_endpoint(scrape_gauges), methods=["GET"], include_in_schema=False)
    app.router.routes[0:0] = [*direct_routes, metrics]
    keep_written_openapi(app)
    return app


def keep_written_openapi(app: FastAPI) -> None:
    """Make the app's OpenAPI document carry each route's `openapi_extra` exactly as it is written.

    FastAPI passes its document through its OpenAPI models, whose numeric keywords are floats: where
    it keeps what they made of a path (those without parameters, here), an id's bound 2^63-1 comes out
    as 2^63 and `1` as `1.0`, so the document would admit ids the API refuses. The routes' own parts
    (request bodies, parameters) are put back from the route as written, after FastAPI is done.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for route in app.routes:
            if not (isinstance(route, APIRoute) and route.include_in_schema and route.openapi_extra):
                continue
            operations = document["paths"].get(route.path_format, {})
            for method in route.methods or ():
                operation = operations.get(method.lower())
                if operation is not None:
                    _restore(operation, route.openapi_extra)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _restore(target: dict[str, Any], written: Mapping[str, Any]) -> None:
    """Put `written` back into `target`: what FastAPI merged it into (parameters by name and place)."""
    for key, value in written.items():
        current = target.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _restore(current, value)
        elif key == "parameters" and isinstance(value, list) and isinstance(current, list):
            # FastAPI appended these to its own parameters: each goes back in its place.
            by_place = {(p["name"], p["in"]): p for p in value}
            target[key] = [copy.deepcopy(by_place.get((p.get("name"), p.get("in")), p)) for p in current]
        else:
            target[key] = copy.deepcopy(value)


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


RawHeaders = Sequence[tuple[bytes, bytes]]


def json_response(body: BaseModel, status: int = 200, headers: RawHeaders = ()) -> Response:
    """`body` as JSON; `headers` as ASGI gives them (lowercase names, latin-1 bytes).

    Raw, because Starlette otherwise copies a mapping into a list of encoded
    pairs and searches it for its own two headers on every response.
    """
    response = Response(content=body.model_dump_json(), status_code=status, media_type="application/json")
    response.raw_headers.extend(headers)
    return response


class Direct:
    """A handler `(Request) -> Response` served as a bare ASGI endpoint of a Starlette route.

    Starlette wraps a function endpoint in a second round of the app's exception
    handlers (the app's ExceptionMiddleware applies the same ones around the
    router) and in a wrapper of every message it sends; an endpoint that is not a
    function is called as it is, so a `Direct` handler's request goes without both.
    An exception it raises reaches the same handlers, one layer further out.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)
