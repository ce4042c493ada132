"""`order-history`'s command line, searched by a generator: any argument list is parsed or refused
as a usage error (exit 2), and every number it lets through is finite and fits PostgreSQL's bigint,
so no later step meets a value it cannot store or compare (NaN, infinity, 2^64)."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from order_history.__main__ import _parser

WHOLE = st.integers(-(2**70), 2**70).map(str)  # within the bigint bounds and beyond them
NUMBERS = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "1e400", "-1", "0", "1", "9223372036854775807", "9223372036854775808",
         "18446744073709551616", "1" * 5000, "0x10", " 7 ", "1.5", "-0"]
    ),
    WHOLE,
    st.floats().map(repr),  # NaN, infinities, exponents, subnormals
    st.from_regex(r"\A\s*[-+]?[0-9_]{1,25}(\.[0-9]*)?([eE][-+]?[0-9]{1,4})?\s*\Z"),
)  # fmt: skip
TEXT = st.one_of(NUMBERS, st.text(max_size=12))


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    """Every command the parser has (subcommands of subcommands too), with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [leaf for name, sub in action.choices.items() for leaf in _leaves(sub, (*path, name))]
    return [(list(path), parser)]


PARSER = _parser()  # parse_args keeps no state between calls: one parser for every example
COMMANDS = _leaves(PARSER)


def _value(action: argparse.Action) -> st.SearchStrategy[str]:
    """One of its choices; for an argument parsed by a type (a number, mostly), mostly numbers."""
    if action.choices:
        return st.sampled_from([str(c) for c in action.choices])
    return st.one_of(WHOLE, NUMBERS, TEXT) if action.type is not None else TEXT


@st.composite
def argument_lists(draw: st.DrawFn, path: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command, its positional arguments, then any of its options, each with a value of its own
    choices or any text and number (or without one)."""
    argv = list(path)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    argv += [draw(_value(a)) for a in actions if not a.option_strings]
    options = [a for a in actions if a.option_strings]
    # The required options always (else nothing of the command parses), then any others.
    chosen = [a for a in options if a.required]
    chosen += draw(st.lists(st.sampled_from(options), max_size=4)) if options else []
    for action in chosen:
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0 and draw(st.integers(0, 7)) < 7:  # now and then without its value
            argv.append(draw(_value(action)))
    return argv


BIGINT = 2**63 - 1


def parsed_or_usage_error(argv: list[str]) -> argparse.Namespace | None:
    code: object = None
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return PARSER.parse_args(argv)
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


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_arguments_are_parsed_into_storable_numbers_or_refused(
    path: list[str], parser: argparse.ArgumentParser, data: st.DataObject
) -> None:
    argv = data.draw(argument_lists(path, parser))
    args = parsed_or_usage_error(argv)
    if args is None:
        return
    for name, value in vars(args).items():
        for n in numbers_in(value):
            assert math.isfinite(n), (name, value)
            assert -BIGINT <= n <= BIGINT, (name, value)
