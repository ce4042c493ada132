"""schemathesis hooks of the fuzz stage (tests/e2e/test_fuzz_apis.py), loaded through SCHEMATHESIS_HOOKS.

schemathesis 4.32 checks integer bounds in floating point: an integer a little
over the ids' maximum 2^63-1 (9223372036854775999, say) compares as equal to
it, so the tool sends it as valid input and reports the API's correct 422 as a
failure. Bodies and path ids in that blur are dropped before they are sent;
the APIs' refusal of them is tested by test_order_api.py and test_goods_api.py
(MAX_ID + 1).

A `cursor` is valid only if this service made it for the same query, which a
schema cannot say: the fuzzer's list reads go without one; cursors are tested
by test_history_filters.py, test_history_cursors.py (any cursor, by
hypothesis) and test_cursors.py.

A read with a well-formed Consistency-Token naming a write that never happened
waits (2 s by default) before its documented 412: the fuzzer's reads carry
`Prefer: wait=0`, so they answer at once; waiting is tested by
test_consistency.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from shared.events import MAX_ID

_FLOAT_BLUR = 4096  # float64's spacing near 2^63 is 2048


def _blurred(value: Any) -> bool:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and MAX_ID < value <= MAX_ID + _FLOAT_BLUR


def _clean(values: Any) -> bool:
    return not (isinstance(values, dict) and any(_blurred(v) for v in values.values()))


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    return _clean(body)


@schemathesis.hook
def filter_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> bool:
    return _clean(path_parameters)


@schemathesis.hook
def filter_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    return _clean(query)


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if query and "cursor" in query:
        del query["cursor"]
    return query


@schemathesis.hook
def map_headers(context: schemathesis.HookContext, headers: dict[str, Any] | None) -> dict[str, Any] | None:
    if headers and "Consistency-Token" in headers:
        headers["Prefer"] = "wait=0"
    return headers
