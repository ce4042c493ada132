"""Every refused request gets a JSON error body naming the field; none grows with the input.

`install_error_handlers` maps what the code raises to status codes: ApiError
(its own), FieldErrors and validation errors (422), NotFound (404),
VersionMismatch (412, with the current ETag), NotYetConsistent (412, naming
the pending consistency tokens, with Retry-After), a body over the limit (413), an
unreachable database (503 with Retry-After), and Starlette's 404/405 (405
with `Allow`). At most MAX_FIELD_ERRORS field errors are listed, and a field
name or message is cut at MAX_TEXT characters, so an error body is small
whatever the request held.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.database import UNAVAILABLE_ERRORS
from shared.http.limits import MAX_BODY_BYTES, BodyTooLarge
from shared.refusals import NotFound, VersionMismatch

log = logging.getLogger(__name__)

MAX_FIELD_ERRORS: Final = 10
MAX_TEXT: Final = 200


class ApiError(Exception):
    """A refused request: status code, a machine-readable code, and words for a person."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class FieldErrors(Exception):
    """Validation errors already phrased per field (names as the client sent them)."""

    def __init__(self, fields: list[dict[str, str]], omitted: int = 0) -> None:
        super().__init__(_summary(fields, omitted))
        self.fields = fields
        self.omitted = omitted


class NotYetConsistent(Exception):
    """The read model does not reflect, within the wait allowed, the writes these tokens name."""

    def __init__(self, pending: list[Any]) -> None:
        super().__init__(f"the read model does not reflect {len(pending)} of the writes named yet")
        self.pending = [str(t) for t in pending]


class ErrorField(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    message: str
    fields: list[ErrorField] = []


class NotYetConsistentBody(ErrorBody):
    pending: list[str]  # the tokens not reflected yet


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "malformed request"},
    404: {"model": ErrorBody, "description": "unknown id"},
    412: {
        "model": ErrorBody,
        "description": "If-Match names another version (ETag: the current one), or is a weak tag, which never matches",
    },
    413: {"model": ErrorBody, "description": f"request body over {MAX_BODY_BYTES} bytes"},
    422: {"model": ErrorBody, "description": "a field is missing, of the wrong type or out of range"},
    503: {"model": ErrorBody, "description": "the database is not reachable; retry after Retry-After seconds"},
}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return _cut(".".join(parts) or "body")


def validation_fields(errors: list[Any]) -> tuple[list[dict[str, str]], int]:
    """At most MAX_FIELD_ERRORS of pydantic's errors as {field, message}, and how many were left out."""
    out = []
    for err in errors[:MAX_FIELD_ERRORS]:
        name = _field_name(tuple(err.get("loc", ())))
        msg = f"{name} is required" if err.get("type") == "missing" else str(err.get("msg", "invalid value"))
        out.append({"field": name, "message": _cut(msg)})
    return out, max(0, len(errors) - MAX_FIELD_ERRORS)


def _summary(fields: list[dict[str, str]], omitted: int) -> str:
    text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return text + (f"; and {omitted} more" if omitted else "")


def error_response(
    status: int, code: str, message: str, fields: list[dict[str, str]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": code, "message": message, "fields": fields}, headers=headers
    )


UNAVAILABLE_BODY: Final = {
    "error": "unavailable",
    "message": "the database is not reachable; retry later",
    "fields": [],
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        fields = [{"field": exc.field, "message": _cut(exc.message)}] if exc.field else []
        return error_response(exc.status, exc.code, exc.message, fields)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc), [{"field": "id", "message": str(exc)}])

    @app.exception_handler(VersionMismatch)
    async def _mismatch(_: Request, exc: VersionMismatch) -> JSONResponse:
        fields = [{"field": "If-Match", "message": str(exc)}]
        return error_response(412, "version_mismatch", str(exc), fields, {"ETag": f'"{exc.current}"'})

    @app.exception_handler(NotYetConsistent)
    async def _not_yet(_: Request, exc: NotYetConsistent) -> JSONResponse:
        content = {
            "error": "not_yet_consistent",
            "message": str(exc),
            "fields": [{"field": "Consistency-Token", "message": _cut(", ".join(exc.pending))}],
            "pending": exc.pending,
        }
        return JSONResponse(status_code=412, content=content, headers={"Retry-After": "1"})

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body_too_large", str(exc), [{"field": "body", "message": str(exc)}])

    async def _validation(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        fields, omitted = validation_fields(list(exc.errors()))
        return error_response(422, "validation_failed", _summary(fields, omitted), fields)

    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _validation)  # type: ignore[arg-type]

    @app.exception_handler(FieldErrors)
    async def _field_errors(_: Request, exc: FieldErrors) -> JSONResponse:
        return error_response(422, "validation_failed", str(exc), exc.fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), [], exc.headers)

    for error_type in UNAVAILABLE_ERRORS:

        @app.exception_handler(error_type)
        async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
            log.warning("database unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
            return JSONResponse(status_code=503, content=UNAVAILABLE_BODY, headers={"Retry-After": "1"})
