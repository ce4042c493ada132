"""`order-history reconcile [--repair] [--json]`: the command databases against the read model.

Contract of `run()`, the console command: every check (order_history/ops/checks.py)
compared over every id range (order_history/ops/reconciler.py); with `--repair`,
what differs is resynced, waited for and compared again (order_history/ops/repair.py).
It prints the differences as a table and a one-line summary, or all of it as
JSON with `--json`; exit 0 when the sides agree (after the repair, with
--repair), else 1, also when a database or a resync fails (with
`error: reconcile failed: ...` on stderr).

The databases are read one after another, not in one snapshot: a write still
on its way through the pipeline shows as a difference, which a second run (or
`--repair`, which waits and checks again) tells from drift.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from order_history.ops.checks import Difference
from order_history.ops.reconciler import Reconciler, Report
from order_history.ops.repair import RepairError, repair
from order_history.settings import Settings
from shared.database import WAIT_OUT_ERRORS

_FAILURES: tuple[type[Exception], ...] = (*WAIT_OUT_ERRORS, RepairError)


def _table(found: Sequence[Difference]) -> str:
    lines = [f"{'ENTITY':<7} {'ID':>12}  {'FIELD':<12} {'COMMAND SIDE':<24} READ SIDE"]
    lines += [f"{d.entity:<7} {d.id:>12}  {d.field:<12} {d.command[:24]:<24} {d.read[:24]}" for d in found]
    return "\n".join(lines)


def _summary(report: Report, seconds: float) -> str:
    compared = ", ".join(f"{n} {name}" for name, n in report.rows.items())
    return (
        f"{len(report.differences)} difference(s) ({compared} compared; "
        f"{report.ranges_differing} of {report.ranges} id ranges differ) in {seconds:.1f} s"
    )


async def run(settings: Settings, do_repair: bool, as_json: bool, range_size: int, repair_timeout: float) -> int:
    """The console command; exit 0 when the sides agree (after the repair, with --repair), else 1."""
    started = time.monotonic()
    try:
        async with Reconciler(settings, range_size) as reconciler:
            report = await reconciler.compare()
            repaired: dict[str, Any] | None = None
            if do_repair and report.differences:
                before = report.differences
                left = await repair(reconciler, before, repair_timeout)
                report = await reconciler.compare()
                repaired = {"differences_before": len(before), "not_repaired": [d.as_dict() for d in left]}
    except _FAILURES as exc:
        print(f"error: reconcile failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    if as_json:
        print(json.dumps({**report.as_dict(), "repair": repaired, "seconds": round(seconds, 3)}, indent=2))
    else:
        if repaired is not None:
            print(f"repair: {repaired['differences_before']} difference(s) resynced")
        if report.differences:
            print(_table(report.differences))
        print(_summary(report, seconds))
    return 1 if report.differences else 0
