"""HTTP plumbing shared by the three APIs: errors, health, request bodies, If-Match."""

from __future__ import annotations

import gc
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar, get_type_hints

import asyncpg
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from shared.commands import NotFound, VersionMismatch
from shared.database import UNAVAILABLE_ERRORS, create_pool, ping
from shared.outbox import OutboxNotifier

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A refused request: status code, a machine-readable code, and words for a person."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class ErrorField(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    message: str
    fields: list[ErrorField] = []


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "body"


def _error_response(
    status: int, code: str, message: str, fields: list[dict[str, str]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": code, "message": message, "fields": fields}, headers=headers
    )


def validation_fields(errors: list[Any], where: str = "") -> list[dict[str, str]]:
    out = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        name = _field_name(loc)
        if where and err.get("type") == "missing":
            msg = f"{name} is required"
        else:
            msg = str(err.get("msg", "invalid value"))
        out.append({"field": name, "message": msg})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        fields = [{"field": exc.field, "message": exc.message}] if exc.field else []
        return _error_response(exc.status, exc.code, exc.message, fields)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error_response(404, "not_found", str(exc), [{"field": "id", "message": str(exc)}])

    @app.exception_handler(VersionMismatch)
    async def _mismatch(_: Request, exc: VersionMismatch) -> JSONResponse:
        fields = [{"field": "If-Match", "message": str(exc)}]
        return _error_response(412, "version_mismatch", str(exc), fields, {"ETag": etag(exc.current)})

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = validation_fields(list(exc.errors()))
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return _error_response(422, "validation_failed", message, fields)

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        fields = validation_fields(list(exc.errors()))
        message = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return _error_response(422, "validation_failed", message, fields)

    @app.exception_handler(FieldErrors)
    async def _field_errors(_: Request, exc: FieldErrors) -> JSONResponse:
        return _error_response(422, "validation_failed", str(exc), exc.fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), [])

    for error_type in UNAVAILABLE_ERRORS:

        @app.exception_handler(error_type)
        async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
            log.warning("database unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            return JSONResponse(
                status_code=503,
                content={"error": "unavailable", "message": "the database is not reachable; retry later", "fields": []},
                headers={"Retry-After": "1"},
            )


def health_router(get_pool: Callable[[], asyncpg.Pool]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz", responses={503: {"description": "a dependency is not reachable"}})
    async def readyz() -> JSONResponse:
        reason = await ping(get_pool())
        if reason is not None:
            return JSONResponse(status_code=503, content={"status": "unavailable", "reason": reason})
        return JSONResponse(status_code=200, content={"status": "ready"})

    return router


def create_service_app(
    *,
    title: str,
    database_url: str,
    routers: list[APIRouter],
    pool_size: int = 10,
    session_settings: Mapping[str, str] | None = None,
    outbox: bool = False,
    state: Callable[[asyncpg.Pool], Mapping[str, object]] | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """A FastAPI app with a database pool in `app.state.pool`, errors and health endpoints.

    `state(pool)` names more objects built on the pool (a service's batchers), set on `app.state`.
    `freeze_heap`: for the app of a server process (not of a test), keep everything
    built at startup out of the cyclic collector's passes (see the lifespan).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(database_url, max_size=pool_size, session_settings=session_settings)
        for name, value in (state(app.state.pool) if state else {}).items():
            setattr(app.state, name, value)
        app.state.outbox_notifier = OutboxNotifier(app.state.pool) if outbox else None
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
            await app.state.pool.close()

    app = FastAPI(title=title, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health_router(lambda: app.state.pool))
    for router in routers:
        app.include_router(router)
        serve_directly(app, router)
    return app


def reads_request_only(route: APIRoute) -> bool:
    """Whether FastAPI has nothing to do for `route`: an async endpoint whose one parameter
    is the Request, with no dependencies, that builds its own Response."""
    dependant = route.dependant
    if not inspect.iscoroutinefunction(route.endpoint) or dependant.request_param_name is None:
        return False
    if len(inspect.signature(route.endpoint).parameters) != 1:
        return False
    if any(
        (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
        )
    ):
        return False
    returns = get_type_hints(route.endpoint).get("return")
    return isinstance(returns, type) and issubclass(returns, Response)


def serve_directly(app: FastAPI, router: APIRouter) -> None:
    """Serve the routes of `router` that read the Request themselves as plain Starlette routes.

    For such a route FastAPI validates nothing, yet its request handler (dependency
    solving, exit stacks, routing through included routers) cost about 140 µs of CPU
    per request, close to a third of a create (docs/benchmarks.md). The Starlette
    route, put ahead of FastAPI's, calls the same endpoint inside the same
    middleware and exception handlers; FastAPI's route stays for the OpenAPI schema.
    """
    direct = [
        Route(route.path, route.endpoint, methods=sorted(route.methods or ()), include_in_schema=False)
        for route in router.routes
        if isinstance(route, APIRoute) and reads_request_only(route)
    ]
    app.router.routes[0:0] = direct


def wake_relay(request: Request) -> None:
    """After a command committed: let the outbox relay know (coalesced, asynchronous)."""
    notifier: OutboxNotifier | None = request.app.state.outbox_notifier
    if notifier is not None:
        notifier.poke()


def pool_of(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


async def read_fields(request: Request, aliases: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The fields of a write request, from a JSON body, a form body or the query string.

    Returns (fields, source) with source "json", "form" or "query". Form and query
    field names are mapped through `aliases` (`userId` -> `user_id`).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if (
        content_type == "application/json"
        or content_type.endswith("+json")
        or (not content_type and body.strip()[:1] == b"{")
    ):
        if not body.strip():
            raise ApiError(400, "invalid_body", "the request body is empty; send a JSON object", "body")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}", "body") from None
        if not isinstance(data, dict):
            raise ApiError(422, "validation_failed", "the request body must be a JSON object", "body")
        return data, "json"
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart
            raise ApiError(400, "invalid_form", f"the form body cannot be read: {exc}", "body") from None
        return {aliases.get(k, k): v for k, v in form.items() if isinstance(v, str)}, "form"
    if body.strip():
        raise ApiError(
            400,
            "unsupported_media_type",
            f"send the body as application/json or a form; got content-type {content_type or '(none)'}",
            "content-type",
        )
    return {aliases.get(k, k): v for k, v in request.query_params.items()}, "query"


def parse_if_match(request: Request) -> int | None:
    """The version an `If-Match` header asks for; None when absent or `*`.

    If-Match compares strong entity tags only (RFC 9110 13.1.1): a weak tag
    (`W/"3"`) never matches, so it fails the precondition.
    """
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip()
    if value.startswith("W/"):
        raise ApiError(
            412, "version_mismatch", 'If-Match needs a strong ETag like "3"; a weak one never matches', "If-Match"
        )
    match = _VERSION_TAG.fullmatch(value)
    if match is None or not 1 <= int(match.group(1)) <= 2**31 - 1:
        raise ApiError(
            400, "invalid_if_match", f'If-Match must be a version in quotes, like "3"; got {raw!r}', "If-Match"
        )
    return int(match.group(1))


_VERSION_TAG = re.compile(r'"?([0-9]{1,10})"?', re.ASCII)


def etag(version: int) -> str:
    return f'"{version}"'


def json_response(body: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        content=body.model_dump_json(),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request"},
    404: {"model": ErrorBody, "description": "unknown id"},
    412: {"model": ErrorBody, "description": "If-Match names another version"},
    422: {"model": ErrorBody, "description": "a field is missing, of the wrong type or out of range"},
}

M = TypeVar("M", bound=BaseModel)


_FORM_INT = re.compile(r"-?[0-9]{1,20}", re.ASCII)


class FieldErrors(Exception):
    """Validation errors already phrased per field (names as the client sent them)."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{f['field']}: {f['message']}" for f in fields))
        self.fields = fields


def validate_fields(model: type[M], fields: dict[str, Any], source: str, aliases: Mapping[str, str] | None = None) -> M:
    """Validate request fields strictly: JSON types as sent; form/query integers must be plain digits."""
    if source == "json":
        return model.model_validate(fields, strict=True)
    known: dict[str, Any] = {}
    for key, value in fields.items():
        info = model.model_fields.get(key)
        if info is None:
            continue  # the original service's clients may send more fields
        if info.annotation is int and isinstance(value, str) and _FORM_INT.fullmatch(value.strip()):
            known[key] = int(value.strip())
        else:
            known[key] = value
    try:
        return model.model_validate(known, strict=True)
    except ValidationError as exc:
        sent_as = {canonical: alias for alias, canonical in (aliases or {}).items()}
        errors = validation_fields(list(exc.errors()))
        for error in errors:
            error["field"] = sent_as.get(error["field"], error["field"])
        raise FieldErrors(errors) from None


def body_doc(model: type[BaseModel], form_fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """OpenAPI requestBody for endpoints that read JSON and, optionally, form fields."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if form_fields:
        content["application/x-www-form-urlencoded"] = {
            "schema": {
                "type": "object",
                "properties": {
                    alias: {"type": "string", "description": f"same as {name}"} for alias, name in form_fields.items()
                },
            }
        }
    return {"requestBody": {"content": content, "required": True}}
