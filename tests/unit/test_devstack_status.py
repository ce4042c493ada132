"""devstack's reading of a consumer's log (its readiness without a metrics port) and `devstack status`'s
lines and exit status, without starting anything (tests/e2e/test_stack_lifecycle.py runs them for real)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from devstack.paths import REPO
from devstack.processes import EXITED, RUNNING, STOPPED
from devstack.readiness import ConsumerView, from_log
from devstack.status import STATUS_ALL_RUNNING, STATUS_EXITED, STATUS_STOPPED, render_status


def log(*records: Mapping[str, object]) -> str:
    """A consumer's JSON log of `records`, among lines of other kinds."""
    lines = ["Traceback (most recent call last): not JSON"]
    lines += [json.dumps({"ts": "2026-12-07T18:00:00+00:00", "level": "info", **r}) for r in records]
    return "\n".join(lines) + "\n"


ASSIGNED = {"msg": "partitions assigned", "partitions": ["order.events[0]", "goods.events[2]"]}
SEEKED = {"msg": "seeked to stored positions", "positions": {"order.events[0]": 3, "goods.events[2]": 0}}


def test_a_consumer_is_ready_once_it_has_sought_its_latest_assignment() -> None:
    assert from_log(log()) is None
    assert from_log(log({"msg": "consumer started"}, ASSIGNED)) is None  # assigned, not yet positioned
    assert from_log(log(ASSIGNED, SEEKED)) == ConsumerView(
        frozenset({("order.events", 0), ("goods.events", 2)}), halted=False
    )


def test_a_rebalance_makes_it_wait_for_the_new_assignment() -> None:
    revoked = {"msg": "partitions revoked", "partitions": ["order.events[0]", "goods.events[2]"]}
    assert from_log(log(ASSIGNED, SEEKED, revoked)) is None
    again = {"msg": "partitions assigned", "partitions": ["order.events[1]"]}
    assert from_log(log(ASSIGNED, SEEKED, revoked, again)) is None
    seeked = {"msg": "seeked to stored positions", "positions": {"order.events[1]": 0}}
    view = from_log(log(ASSIGNED, SEEKED, revoked, again, seeked))
    assert view == ConsumerView(frozenset({("order.events", 1)}), halted=False)


def test_an_empty_assignment_is_ready_and_a_halt_is_said() -> None:
    # A consumer beyond the partitions gets none: nothing to seek, so no seek line follows.
    assert from_log(log({"msg": "partitions assigned", "partitions": []})) == ConsumerView(frozenset(), False)
    halt = {
        "level": "error",
        "msg": "consumer stopped: stored position does not fit the log; rebuild the read model "
        "or reset the positions (see the README), then restart",
    }
    assert from_log(log(ASSIGNED, halt)) == ConsumerView(frozenset(), halted=True)


def entry(state: str, pid: int | None = None, **more: object) -> dict[str, object]:
    return {"state": state, "pid": pid, "running": state == RUNNING, "log": str(REPO / "x.log"), **more}


def test_status_lines_and_exit_status() -> None:
    up: dict[str, Mapping[str, object]] = {
        "postgres": entry(RUNNING, 10, port=5432),
        "kafka": {"state": RUNNING, "pids": [11, 12, 13], "bootstrap": "127.0.0.1:9092", "log": ""},
        "order_history-consumer-0": entry(RUNNING, 14),
    }
    text, code = render_status(up)
    assert code == STATUS_ALL_RUNNING
    assert text.splitlines() == [
        "postgres                  running  pid 10           127.0.0.1:5432  x.log",
        "kafka                     running  pids 11, 12, 13  127.0.0.1:9092",
        "order_history-consumer-0  running  pid 14                           x.log",
        "all 3 running",
    ]

    crashed = {**up, "order_history-consumer-0": entry(EXITED), "order-relay": entry(STOPPED)}
    text, code = render_status(crashed)
    assert code == STATUS_EXITED
    assert "order_history-consumer-0  not running (exited)" in text and "pid None" not in text
    assert text.splitlines()[-1] == (
        "not running: order_history-consumer-0 (exited), order-relay (stopped). "
        "The log of a process that exited says why; `make up` starts what is not running."
    )

    text, code = render_status({**up, "order-relay": entry(STOPPED)})
    assert code == STATUS_STOPPED
    assert text.splitlines()[-1] == "not running: order-relay (stopped). `make up` starts what is not running."

    text, code = render_status({name: entry(STOPPED) for name in up})
    assert (code, text.splitlines()[-1]) == (STATUS_STOPPED, "the stack is stopped; `make up` starts it")
