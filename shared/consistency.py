"""Consistency tokens: what a write names so that a later read can wait until it is reflected.

A write of an entity answers `Consistency-Token: <token>`; the token names the
entity and the version the write gave it (`o11.3`: order 17 at version 3,
`g5.2`: goods 5 at version 2, in hex; clients treat it as opaque). The read model
reflects the write once its row of that entity has at least that version: a
later write, a delete (a tombstone keeps its version), a rebuild (the same
events give the same versions) or a deletion snapshot (version 2^31-1) all
count, and a goods move is one row with both orders' counts applied with it.

`Prefer: wait=N` (RFC 7240) asks a read to wait up to N seconds (at most
MAX_WAIT) instead of DEFAULT_WAIT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

HEADER: Final = "Consistency-Token"
DEFAULT_WAIT: Final = 2.0
MAX_WAIT: Final = 10.0

_KINDS: Final = {"order": "o", "goods": "g"}
_ENTITIES: Final = {kind: entity for entity, kind in _KINDS.items()}
# Ids and versions in lowercase hex without leading zeros; these patterns match
# exactly 1 .. 2^63-1 and 1 .. 2^31-1, so the documented form is the accepted one.
_ID: Final = r"(?:[1-7][0-9a-f]{15}|[1-9a-f][0-9a-f]{0,14})"
_VERSION: Final = r"(?:[1-7][0-9a-f]{7}|[1-9a-f][0-9a-f]{0,6})"
_ONE: Final = rf"[og]{_ID}\.{_VERSION}"
# The header: tokens separated by commas (as HTTP joins repeated headers), at most
# MAX_LENGTH characters (so at most 100 tokens); the OpenAPI documents give both.
PATTERN: Final = rf"^[ \t]*{_ONE}(?:[ \t]*,[ \t]*{_ONE})*[ \t]*$"
MAX_LENGTH: Final = 499
# A write's answer names one token.
TOKEN_PATTERN: Final = rf"^{_ONE}$"
# The documents' `format` of the header: the pattern says what is valid; the name lets a client's
# generator (and the fuzz stage's, tests/fuzz_hooks.py) make tokens for it.
FORMAT: Final = "consistency-token"
_TOKEN: Final = re.compile(rf"([og])({_ID})\.({_VERSION})", re.ASCII)
_HEADER: Final = re.compile(PATTERN, re.ASCII)
_WAIT: Final = re.compile(r"[ \t]*wait[ \t]*=[ \t]*\"?([0-9]{1,6})\"?[ \t]*", re.ASCII | re.IGNORECASE)


class MalformedToken(ValueError):
    """A Consistency-Token header that is not a list of tokens this service wrote."""


@dataclass(frozen=True, order=True)
class Token:
    entity: str  # "order" or "goods"
    id: int
    version: int

    def __str__(self) -> str:
        return f"{_KINDS[self.entity]}{self.id:x}.{self.version:x}"


def token(entity: str, entity_id: int, version: int) -> str:
    """The header value for a write that left `entity` `entity_id` at `version`."""
    return str(Token(entity, entity_id, version))


def parse(header: str) -> list[Token]:
    """The tokens of a `Consistency-Token` header."""
    if len(header) > MAX_LENGTH or _HEADER.fullmatch(header) is None:
        raise MalformedToken(
            f"a comma-separated list of tokens as the write APIs return them, at most {MAX_LENGTH} characters"
        )
    found = {
        Token(_ENTITIES[kind], int(entity_id, 16), int(version, 16))
        for kind, entity_id, version in _TOKEN.findall(header)
    }
    return sorted(found)


def wait_of(prefer: str | None) -> float:
    """Seconds a read may wait: `Prefer: wait=N` (capped at MAX_WAIT), else DEFAULT_WAIT.
    Other preferences, and a malformed one, are ignored (RFC 7240)."""
    for preference in (prefer or "").split(","):
        match = _WAIT.fullmatch(preference.split(";")[0])
        if match is not None:
            return min(float(match.group(1)), MAX_WAIT)
    return DEFAULT_WAIT


def openapi_parameters() -> list[dict[str, object]]:
    """The request headers of a read that may wait, for the OpenAPI documents."""
    return [
        {
            "name": HEADER,
            "in": "header",
            "required": False,
            "description": "tokens of writes (from their Consistency-Token response headers, comma-separated): "
            "answer once the read model reflects them all",
            "schema": {"type": "string", "format": FORMAT, "pattern": PATTERN, "maxLength": MAX_LENGTH},
        },
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": f"RFC 7240 preferences, comma-separated. `wait=N` (N whole seconds, at most six digits; "
            f'`wait="N"` too; the first one counts): with {HEADER}, wait up to N seconds (at most '
            f"{MAX_WAIT:.0f}; default {DEFAULT_WAIT:.0f}; `wait=0`: answer at once). Other preferences, and "
            "malformed ones, are ignored as RFC 7240 asks: any value is accepted",
            "schema": {"type": "string", "examples": ["wait=5"]},
        },
    ]


def openapi_response_header() -> dict[str, object]:
    """The response header of a write, for the OpenAPI documents."""
    return {
        HEADER: {
            "description": "names this write: send it with a read of order-history to see the write reflected",
            "schema": {"type": "string", "format": FORMAT, "pattern": TOKEN_PATTERN},
        }
    }
