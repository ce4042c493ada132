"""From decoded events to statement parameters: the payload's values of an entity's columns, and
the array literals the batch statement takes (statements.py).

The batch statement receives each column as one text parameter, an array
literal that the statement casts (`$1::text::bigint[]`): writing the literal
in Python is far cheaper than asyncpg's binary array encoding, and
PostgreSQL parses it quickly (docs/benchmarks.md).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Final

import orjson
import pydantic_core

from order_history.projection.columns import Entity, Kind


def int_array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of ints or booleans (None is NULL).

    orjson writes them as a JSON array: numbers and true/false/null, which is
    also PostgreSQL's array syntax once the brackets are braces. asyncpg's
    binary array encoding costs several times as much.
    """
    return "{" + orjson.dumps(values)[1:-1].decode() + "}"


_EPOCH_DAY: Final = dt.date(1970, 1, 1).toordinal()
# tzinfo classes whose utcoffset() is one fixed offset: the one pydantic decodes into, and the standard library's.
_FIXED_OFFSET_ZONES: Final = (pydantic_core.TzInfo, dt.timezone)


def micros_array(values: Sequence[dt.datetime | None]) -> str:
    """A PostgreSQL array literal of microseconds since 1970-01-01 UTC (see statements._timestamp).

    A naive datetime is taken as UTC, as the consumer's session (timezone UTC) takes one.
    Computed from the fields, not as `(v - epoch) // 1 µs`, which asks the
    tzinfo pydantic decodes into for its offset through `datetime.utcoffset()`,
    which a profile of the consumer showed among its costliest calls
    (docs/benchmarks.md). A fixed-offset zone's offset does not depend on the
    date, so it is asked for without one.
    """
    out: list[int | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        us = ((v.toordinal() - _EPOCH_DAY) * 86400 + v.hour * 3600 + v.minute * 60 + v.second) * 1_000_000
        tz = v.tzinfo
        if tz is not None:
            offset = tz.utcoffset(None) if type(tz) in _FIXED_OFFSET_ZONES else v.utcoffset()
            if offset:
                us -= (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
        out.append(us + v.microsecond)
    return int_array(out)


def text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text: each element double-quoted, `\\` and `"` escaped."""
    return (
        "{"
        + ",".join("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
        + "}"
    )


# Each column kind's array literal (see columns.Kind).
ENCODERS: Final[dict[Kind, Callable[[Sequence[Any]], str]]] = {
    "int": int_array,
    "text": text_array,
    "time": micros_array,
}


def payload_fields(entity: Entity) -> Callable[[Any], tuple[Any, ...]]:
    """The payload's values of the entity's payload columns, as a tuple (one C call per event)."""
    get = attrgetter(*entity.payload)
    return get if len(entity.payload) > 1 else lambda data: (get(data),)


def as_columns(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """Rows of `width` values as `width` columns."""
    return list(zip(*rows, strict=True)) if rows else [()] * width
