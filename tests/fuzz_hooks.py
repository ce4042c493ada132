"""schemathesis hooks of the fuzz stage (tests/e2e/test_fuzz_apis.py), loaded through SCHEMATHESIS_HOOKS.

The documents say what the APIs accept; these hooks drop no input. What is left
works around limits of the tool, or keeps a run short, and says which:

- Tool limit: the coverage phase of schemathesis 4 draws a header value from
  letters and digits only, unless the header's `format` has a generator. A
  Consistency-Token needs a dot, so without one it found no valid value, and
  then sent an invalid stand-in inside cases it calls valid (reported as valid
  data refused). The documents name the header's format (`consistency-token`);
  its generator is registered here, from the same code that writes tokens.
- Tool limit: a list cursor is valid only if this service signed it for the
  same query, which no schema can say. A cursor of the documented shape is
  schema-valid, and its 422 is documented; tests/schemathesis.toml lets the list
  answer 422 to valid data, and `only_the_cursor_is_refused` holds that 422 to
  a refusal of the cursor alone, so no other valid input may get one.
- Time: a read with a well-formed Consistency-Token naming a write that never
  happened waits (2 s by default, up to 10 s) before its documented 412. The
  fuzzer's reads put `wait=0` ahead of whatever Prefer it drew (the first wait
  preference counts), so they answer at once; waiting is tested by
  test_consistency.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

from shared import consistency
from shared.events import MAX_ID, MAX_VERSION

# Small ids and versions name writes the command APIs' runs made (a token then often reflects at
# once, a 200); any other names one that never happened (a 412).
_IDS = st.one_of(st.integers(1, 64), st.integers(1, MAX_ID))
_VERSIONS = st.one_of(st.integers(1, 3), st.integers(1, MAX_VERSION))
_TOKENS = st.builds(consistency.token, st.sampled_from(["order", "goods"]), _IDS, _VERSIONS)


@st.composite
def _consistency_tokens(draw: st.DrawFn) -> str:
    """A Consistency-Token header: tokens joined as HTTP joins a repeated header, within MAX_LENGTH."""
    tokens = draw(st.lists(_TOKENS, min_size=1, max_size=8))
    separators = draw(st.lists(st.sampled_from([",", ", ", " ,", "\t,\t"]), min_size=len(tokens), max_size=len(tokens)))
    return "".join(s + t for s, t in zip(["", *separators[1:]], tokens, strict=True))


schemathesis.openapi.format(consistency.FORMAT, _consistency_tokens())


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    """Every phase's requests (a `map_headers` hook misses the coverage phase's)."""
    headers = case.headers
    if headers and consistency.HEADER in headers:
        drawn = headers.get("Prefer")
        headers["Prefer"] = "wait=0" if not drawn else f"wait=0, {drawn}"


@schemathesis.check
def only_the_cursor_is_refused(ctx: schemathesis.CheckContext, response: Any, case: schemathesis.Case[Any]) -> None:
    """Valid data refused with a 422 by the list: only for its cursor (see the module's doc)."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:
        return
    fields = {f.get("field") for f in response.json().get("fields", [])}
    if case.path != "/v1/order-history" or not (case.query or {}).get("cursor") or fields != {"cursor"}:
        raise AssertionError(f"valid data refused with 422, not for a cursor: fields {sorted(map(str, fields))}")
