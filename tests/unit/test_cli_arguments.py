"""`order-history`'s command line, searched by a generator: any argument list is parsed or refused
as a usage error (exit 2), and every number it lets through is finite and fits PostgreSQL's bigint,
so no later step meets a value it cannot store or compare (NaN, infinity, 2^64)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from order_history.__main__ import _parser

# Each command with its positional arguments: N a number, T any text.
COMMANDS = [
    ["status"],
    ["orphans"],
    ["reconcile"],
    ["explain", "N"],
    ["rebuild"],
    ["reset-positions", "--topic", "T", "--to", "T"],
    ["dlq", "list"],
    ["dlq", "show", "T"],
    ["dlq", "skip", "T", "N", "N"],
    ["dlq", "replay", "T"],
    ["dlq", "purge", "T"],
]
NUMBERS = st.sampled_from(
    ["nan", "inf", "-inf", "1e400", "-1", "0", "1", "9223372036854775807", "9223372036854775808",
     "18446744073709551616", "1" * 5000, "0x10", " 7 ", "1.5", "-0"]
)  # fmt: skip
OPTIONS = st.sampled_from(
    ["--json", "--limit", "--goods-limit", "--range-size", "--repair", "--repair-timeout", "--switch-lag",
     "--partition", "--reason", "--all", "--full"]
)  # fmt: skip
TEXT = st.one_of(NUMBERS, st.text(max_size=12))


@st.composite
def argument_lists(draw: st.DrawFn) -> list[str]:
    """A command, its positional arguments, then options each followed (or not) by a value."""
    argv = [draw(NUMBERS) if t == "N" else draw(TEXT) if t == "T" else t for t in draw(st.sampled_from(COMMANDS))]
    for _ in range(draw(st.integers(0, 3))):
        argv.append(draw(OPTIONS))
        if draw(st.integers(0, 3)):
            argv.append(draw(TEXT))
    return argv


BIGINT = 2**63 - 1


def parsed_or_usage_error(argv: list[str]) -> argparse.Namespace | None:
    code: object = None
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2, (argv, code)
    return None


def numbers_in(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, list):
        return [n for item in value for n in numbers_in(item)]
    return []


@settings(max_examples=400, deadline=None)
@given(argument_lists())
def test_any_arguments_are_parsed_into_storable_numbers_or_refused(argv: list[str]) -> None:
    args = parsed_or_usage_error(argv)
    if args is None:
        return
    for name, value in vars(args).items():
        for n in numbers_in(value):
            assert math.isfinite(n), (name, value)
            assert -BIGINT <= n <= BIGINT, (name, value)
