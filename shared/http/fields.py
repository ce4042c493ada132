"""What a write request sends: its fields (JSON, form or query), its path id, its If-Match.

The original Go clients send form or query fields (`userId=7`); the writes
accept them beside JSON unless the service is told not to (`accept_form`:
HTML forms can be posted across sites, JSON bodies cannot; see docs/api.md,
"Form and query-field writes (CSRF)"). Form and query integers must be plain
digits; JSON is strict (`"7"` is not an integer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from shared.events import MAX_ID, MAX_VERSION
from shared.http.errors import ApiError, FieldErrors, validation_fields

M = TypeVar("M", bound=BaseModel)

_FORM_INT: Final = re.compile(r"-?[0-9]{1,20}", re.ASCII)


def whole_numbers_up_to(highest: int) -> str:
    """A regular expression (no anchors) of the decimal numbers 1 .. `highest`, without leading zeros.

    The documents' patterns are built from it, so that a pattern admits exactly the numbers the
    API accepts: one alternative per length below that of `highest`, then one per digit of it.
    """
    digits = str(highest)
    shorter = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    same_length = []
    for i, digit in enumerate(digits):
        low, below = (1 if i == 0 else 0), int(digit) - 1
        if below >= low:
            rest = len(digits) - i - 1
            same_length.append(digits[:i] + _digits(low, below) + _any_digits(rest))
    return "(?:" + "|".join([*shorter, *same_length, digits]) + ")"


def _digits(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _any_digits(count: int) -> str:
    return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


_VERSION: Final = whole_numbers_up_to(MAX_VERSION)
# What the API accepts as If-Match, between optional spaces and tabs (HTTP's OWS): `*`, a version
# as a strong ETag ("3") or bare (3, for clients that forget the quotes), or any weak tag (W/...),
# which never matches (412). Its own ETags are versions without leading zeros, and strong tags
# compare character by character (RFC 9110 8.8.3.2): "03" could never match, so it is refused.
IF_MATCH_PATTERN: Final = rf'^[ \t]*(?:\*|W/.*|"{_VERSION}"|{_VERSION})[ \t]*$'
_STRONG_TAG: Final = re.compile(rf'"({_VERSION})"|({_VERSION})', re.ASCII)


async def read_fields(
    request: Request, form_fields: Mapping[str, str], accept_form: bool = True
) -> tuple[dict[str, Any], str]:
    """The fields of a write request, from a JSON body, a form body or the query string.

    Returns (fields, source) with source "json", "form" or "query". Form and query
    fields are read by their form names (`form_fields`: `userId` -> `user_id`);
    others are ignored, as the original service ignored them.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if (
        content_type == "application/json"
        or content_type.endswith("+json")
        # A body without a content type is taken for JSON only where forms are
        # accepted: a browser may send one cross-site without a CORS preflight.
        or (not content_type and accept_form and body.strip()[:1] == b"{")
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
    if not accept_form and (body.strip() or request.query_params):
        raise ApiError(400, "json_only", "this service accepts JSON bodies only (application/json)", "content-type")
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form()
        except Exception as exc:  # malformed multipart
            raise ApiError(400, "invalid_form", f"the form body cannot be read: {exc}", "body") from None
        return {form_fields[k]: v for k, v in form.items() if k in form_fields and isinstance(v, str)}, "form"
    if body.strip():
        raise ApiError(
            400,
            "unsupported_media_type",
            f"send the body as application/json or a form; got content-type {content_type[:100] or '(none)'}",
            "content-type",
        )
    return {form_fields[k]: v for k, v in request.query_params.items() if k in form_fields}, "query"


def validate_fields(model: type[M], fields: dict[str, Any], source: str, aliases: Mapping[str, str] | None = None) -> M:
    """Validate request fields strictly: JSON types as sent; form/query integers must be plain digits.

    A JSON number with no fractional part (`7.0`) is an integer, as JSON Schema
    says, so the documents' `"type": "integer"` is what the service accepts.
    """
    if source == "json":
        try:
            return model.model_validate({k: _integral(v) for k, v in fields.items()}, strict=True)
        except ValidationError as exc:
            raise FieldErrors(*validation_fields(list(exc.errors()))) from None
    known: dict[str, Any] = {}
    for key, value in fields.items():
        info = model.model_fields.get(key)
        if info is None:
            continue  # the original service's clients may send more fields
        if info.annotation in (int, int | None) and isinstance(value, str) and _FORM_INT.fullmatch(value.strip()):
            known[key] = int(value.strip())
        else:
            known[key] = value
    try:
        return model.model_validate(known, strict=True)
    except ValidationError as exc:
        sent_as = {canonical: alias for alias, canonical in (aliases or {}).items()}
        errors, omitted = validation_fields(list(exc.errors()))
        for error in errors:
            error["field"] = sent_as.get(error["field"], error["field"])
        raise FieldErrors(errors, omitted) from None


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def path_id(request: Request, name: str) -> int:
    """The id in the path parameter `name`: 1 .. 2^63-1, else 422 naming it."""
    raw = request.path_params[name]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and 1 <= int(raw) <= MAX_ID):
        raise FieldErrors([{"field": name, "message": f"must be a whole number from 1 to {MAX_ID}"}])
    return int(raw)


def parse_if_match(request: Request) -> int | None:
    """The version an `If-Match` header asks for; None when absent or `*`.

    If-Match compares strong entity tags only (RFC 9110 13.1.1): a weak tag
    (`W/"3"`) never matches, so it fails the precondition.
    """
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    value = raw.strip(" \t")  # HTTP's optional whitespace, as IF_MATCH_PATTERN allows
    if value == "*":
        return None
    if value.startswith("W/"):
        raise ApiError(
            412, "version_mismatch", 'If-Match needs a strong ETag like "3"; a weak one never matches', "If-Match"
        )
    match = _STRONG_TAG.fullmatch(value)
    if match is None:
        raise ApiError(
            400,
            "invalid_if_match",
            f'If-Match must be a version in quotes, like "3" (1 to {MAX_VERSION}); got {raw[:40]!r}',
            "If-Match",
        )
    return int(match.group(1) or match.group(2))


def etag(version: int) -> str:
    return f'"{version}"'
