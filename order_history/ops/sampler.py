"""The divergence sampler: `reconcile`'s comparison, a few id ranges at a time, all the time.

Contract of `Sampler.step()` (one interval's work; order_history/ops/watch.py calls it
in the one consumer instance that holds the sampler's lock):

- it compares at most `divergence_ranges` id ranges (of `divergence_range_size`
  ids, for each check of checks.CHECKS in turn) at the cursor, which runs
  through every range of every check: a pass. A pass covers the ranges up to the
  highest id either side held when it began; when the cursor reaches its end the
  pass is complete and the next step begins another. A range is compared as
  `reconcile` compares it: per side a row count and a sum of hashes, the rows
  only when those differ;
- it also compares again at most as many ranges that hold differences seen
  earlier, each once its last check is `divergence_settle` old, oldest first;
- a difference (entity, id, field) counts as divergent only when it is still
  there, with the same values on both sides, at a check `divergence_settle` or
  more after it was first seen, and the command side has not written the rows
  compared for that id for `divergence_settle` (their updated_at; for a count,
  the goods naming the order on either side): an event still on its way
  through the outbox, Kafka and the consumer is not divergence. A difference
  whose values moved between two checks is seen anew (a count that goods
  deletes keep changing: a deleted row leaves no updated_at). Once counted, it
  stays counted until a check of its range no longer finds it;
- what it found and where the cursor is are written to the read database
  (divergent_rows, divergence_sampler: migration 0012) with each range, in one
  transaction, so `status` shows them and another process resumes the pass.

Detection bound: a pass spans U ranges in all (per check, its highest id / range
size + 1), so it takes ceil(U / R) steps, R ranges each; a step starts T (the
interval) after the last one ended, and takes d. A row that diverges is in a
range the cursor reaches within the step under way and one pass; the
difference is confirmed at the first check `settle` or more later, at the
latest the step after. It is counted within
(ceil(U / R) + 2) * (T + d) + settle (docs/operations.md, "The divergence sampler").
A row written again within every settle time is counted once its writes pause.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from order_history.ops.checks import CHECKS, Check, Difference
from order_history.ops.reconciler import Reconciler
from shared.database import Connection

log = logging.getLogger(__name__)

_STATE = """SELECT now() AS now, started_at, range_size, pass_started_at, pass_ranges, cursor_check, cursor_range,
                   last_pass_started_at, last_pass_finished_at, passes, steps, stepped_at
            FROM divergence_sampler"""
_CREATE_STATE = "INSERT INTO divergence_sampler (range_size) VALUES ($1) ON CONFLICT DO NOTHING"
_SAVE_CURSOR = """UPDATE divergence_sampler SET range_size = $1, pass_started_at = $2, pass_ranges = $3::jsonb,
                         cursor_check = $4, cursor_range = $5"""
_PASS_DONE = """UPDATE divergence_sampler SET last_pass_started_at = pass_started_at, last_pass_finished_at = now(),
                       passes = passes + 1, pass_started_at = NULL, pass_ranges = NULL, cursor_check = NULL,
                       cursor_range = NULL"""
_STEPPED = "UPDATE divergence_sampler SET steps = steps + 1, stepped_at = now()"
_RANGE_ROWS = """SELECT entity, id, field, command, read, first_seen_at, confirmed_at FROM divergent_rows
                 WHERE check_name = $1 AND id >= $2 AND id < $3"""
_FORGET_RANGE = "DELETE FROM divergent_rows WHERE check_name = $1 AND id >= $2 AND id < $3"
_RECORD = """INSERT INTO divergent_rows
                 (check_name, entity, id, field, command, read, first_seen_at, checked_at, confirmed_at)
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                                      $7::timestamptz[], $8::timestamptz[], $9::timestamptz[])"""
# The ranges holding differences whose last check is at least the settle time old, oldest first.
_DUE = """SELECT check_name, id / $1 AS number FROM divergent_rows
          WHERE check_name = ANY($4::text[])
          GROUP BY 1, 2 HAVING max(checked_at) <= now() - make_interval(secs => $2)
          ORDER BY max(checked_at), 1, 2 LIMIT $3"""
_RETIRED_CHECKS = "DELETE FROM divergent_rows WHERE NOT check_name = ANY($1::text[])"

FIGURES: Final = """SELECT
    (SELECT count(*) FROM (SELECT DISTINCT entity, id FROM divergent_rows WHERE confirmed_at IS NOT NULL) AS d)
        AS divergent,
    (SELECT count(*) FROM divergent_rows WHERE confirmed_at IS NULL) AS unconfirmed,
    (SELECT extract(epoch FROM now() - coalesce(last_pass_started_at, started_at))::float8 FROM divergence_sampler)
        AS full_pass_age"""


@dataclass(frozen=True)
class Figures:
    """What the metrics export: rows counted divergent (distinct entity and id), differences
    waiting for confirmation, and the seconds since the newest complete pass began (every range
    has been compared since; before the first pass, since the sampler first ran; None: never ran)."""

    divergent: int
    unconfirmed: int
    full_pass_age: float | None


async def figures(conn: Connection) -> Figures:
    row = await conn.fetchrow(FIGURES)
    assert row is not None
    return Figures(row["divergent"], row["unconfirmed"], row["full_pass_age"])


@dataclass
class StepReport:
    ranges: int = 0  # ranges compared, at the cursor and again
    differing: int = 0  # of which their figures differed
    passes_completed: int = 0
    seconds: float = 0.0  # spent comparing them


class Sampler:
    """One step at a time over `state` (the read database, as the consumer's role) and `reconciler`
    (its connections to the command databases and the read model, entered)."""

    def __init__(
        self, state: Connection, reconciler: Reconciler, ranges: int, settle: float, checks: tuple[Check, ...] = CHECKS
    ) -> None:
        self.state = state
        self.reconciler = reconciler
        self.ranges = ranges
        self.settle = settle
        self.checks = checks
        self.by_name = {check.name: check for check in checks}
        self.range_size = reconciler.range_size

    async def step(self) -> StepReport:
        report = StepReport()
        await self.state.execute(_CREATE_STATE, self.range_size)
        names = [c.name for c in self.checks]
        await self.state.execute(_RETIRED_CHECKS, names)
        due = await self.state.fetch(_DUE, self.range_size, self.settle, self.ranges, names)
        for row in due:
            await self._compare(self.by_name[row["check_name"]], row["number"], report)
        for _ in range(self.ranges):
            state = await self.state.fetchrow(_STATE)
            assert state is not None
            cursor = _cursor(state, self.range_size, self.by_name)
            if cursor is None:
                cursor = await self._begin_pass()
            if cursor is None:  # nothing on either side: the pass was empty
                await self.state.execute(_PASS_DONE)
                report.passes_completed += 1
                break
            check, number, pass_ranges, started = cursor
            following = _following(self.checks, pass_ranges, check.name, number)
            advance = (following, pass_ranges, started)
            await self._compare(check, number, report, advance)
            if following is None:
                report.passes_completed += 1
                break
        await self.state.execute(_STEPPED)
        return report

    async def _begin_pass(self) -> tuple[Check, int, dict[str, int], dt.datetime] | None:
        pass_ranges = {check.name: await self.reconciler.id_ranges(check) for check in self.checks}
        started: dt.datetime = await self.state.fetchval("SELECT now()")
        first = next((c for c in self.checks if pass_ranges[c.name] > 0), None)
        if first is None:
            await self.state.execute(_SAVE_CURSOR, self.range_size, started, json.dumps(pass_ranges), None, None)
            return None
        await self.state.execute(_SAVE_CURSOR, self.range_size, started, json.dumps(pass_ranges), first.name, 0)
        log.debug("divergence sampler: pass begins", extra={"ranges": pass_ranges, "range_size": self.range_size})
        return first, 0, pass_ranges, started

    async def _compare(
        self,
        check: Check,
        number: int,
        report: StepReport,
        advance: tuple[tuple[str, int] | None, dict[str, int], dt.datetime] | None = None,
    ) -> None:
        """Compare one range and record its differences; `advance`: move the cursor past it (to the
        following range of the pass, or None: the pass is complete) in the same transaction."""
        started = time.monotonic()
        now: dt.datetime = await self.state.fetchval("SELECT now()")
        settle = dt.timedelta(seconds=self.settle)
        found = await self.reconciler.range_differences(check, number)
        low, high = number * self.range_size, (number + 1) * self.range_size
        recorded = await self.state.fetch(_RANGE_ROWS, check.name, low, high)
        seen = {(r["entity"], r["id"], r["field"]): r for r in recorded}
        kept = {d: _kept(seen.get((d.entity, d.id, d.field)), d, now) for d in found}
        settled = {d for d, (first_seen, confirmed) in kept.items() if confirmed is None and first_seen <= now - settle}
        ages = await self.reconciler.write_ages(check, [d.id for d in settled])
        columns: list[list[Any]] = [[] for _ in range(8)]
        for d in found:
            first_seen, confirmed = kept[d]
            if d in settled and ages.get(d.id, float("inf")) >= self.settle:
                confirmed = now
                log.warning(
                    "divergence sampler: the read model differs from the command side",
                    extra={**d.as_dict(), "check": check.name, "first_seen_at": first_seen.isoformat()},
                )
            values = (d.entity, d.id, d.field, d.command, d.read, first_seen, now, confirmed)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self.state.transaction():
            await self.state.execute(_FORGET_RANGE, check.name, low, high)
            if found:
                await self.state.execute(_RECORD, check.name, *columns)
            if advance is not None:
                following, pass_ranges, pass_started = advance
                if following is None:
                    await self.state.execute(_PASS_DONE)
                else:
                    await self.state.execute(
                        _SAVE_CURSOR, self.range_size, pass_started, json.dumps(pass_ranges), *following
                    )
        report.ranges += 1
        report.differing += bool(found)
        report.seconds += time.monotonic() - started


def _kept(row: Any, d: Difference, now: dt.datetime) -> tuple[dt.datetime, dt.datetime | None]:
    """(first seen, confirmed) of difference `d` found now, given its row of the last check (or None).

    A difference not confirmed yet whose values moved since (either side's) is seen anew: a
    change is on its way through the pipeline, as with a count that the deletes of its goods
    keep changing, which no updated_at dates. A confirmed one stays confirmed while it lasts."""
    if row is None:
        return now, None
    if row["confirmed_at"] is None and (row["command"], row["read"]) != (d.command, d.read):
        return now, None
    return row["first_seen_at"], row["confirmed_at"]


def _cursor(
    state: Any, range_size: int, by_name: dict[str, Check]
) -> tuple[Check, int, dict[str, int], dt.datetime] | None:
    """The pass in progress: the check and range at the cursor, the pass's ranges and start; None
    when there is none to resume (none begun, the last one complete, the range size or the
    checks changed since)."""
    if state["pass_started_at"] is None or state["cursor_check"] is None or state["range_size"] != range_size:
        return None
    pass_ranges: dict[str, int] = json.loads(state["pass_ranges"]) if state["pass_ranges"] else {}
    if state["cursor_check"] not in by_name or set(pass_ranges) != set(by_name):
        return None
    return by_name[state["cursor_check"]], int(state["cursor_range"]), pass_ranges, state["pass_started_at"]


def _following(
    checks: tuple[Check, ...], pass_ranges: dict[str, int], name: str, number: int
) -> tuple[str, int] | None:
    """The range of the pass after (name, number); None after its last."""
    if number + 1 < pass_ranges[name]:
        return name, number + 1
    names = [c.name for c in checks]
    for later in names[names.index(name) + 1 :]:
        if pass_ranges[later] > 0:
            return later, 0
    return None


async def report(conn: Connection, limit: int) -> dict[str, Any]:
    """The sampler's state as `status` shows it: the figures, the pass in progress and the last
    complete one, and up to `limit` divergent rows (oldest first)."""
    found = await figures(conn)
    state = await conn.fetchrow(_STATE)
    rows = await conn.fetch(
        """SELECT check_name, entity, id, field, command, read, first_seen_at, confirmed_at FROM divergent_rows
           WHERE confirmed_at IS NOT NULL ORDER BY first_seen_at, entity, id, field LIMIT $1""",
        limit,
    )
    out: dict[str, Any] = {
        "divergent_rows": found.divergent,
        "unconfirmed_differences": found.unconfirmed,
        "full_pass_age_seconds": found.full_pass_age,
        "divergent": [
            {
                "check": r["check_name"],
                "entity": r["entity"],
                "id": r["id"],
                "field": r["field"],
                "command": r["command"],
                "read": r["read"],
                "first_seen_at": r["first_seen_at"].isoformat(),
                "confirmed_at": r["confirmed_at"].isoformat(),
            }
            for r in rows
        ],
        "sampler": None,
    }
    if state is not None:
        pass_ranges: dict[str, int] = json.loads(state["pass_ranges"]) if state["pass_ranges"] else {}
        done = 0
        if state["cursor_check"] in pass_ranges:
            names = [c.name for c in CHECKS if c.name in pass_ranges]  # the pass's order (jsonb sorts keys)
            done = sum(pass_ranges[n] for n in names[: names.index(state["cursor_check"])]) + state["cursor_range"]
        out["sampler"] = {
            "started_at": state["started_at"].isoformat(),
            "range_size": state["range_size"],
            "passes": state["passes"],
            "steps": state["steps"],
            "last_step_age_seconds": _age(state["now"], state["stepped_at"]),
            "last_pass_started_at": _iso(state["last_pass_started_at"]),
            "last_pass_seconds": (
                None
                if state["last_pass_finished_at"] is None
                else (state["last_pass_finished_at"] - state["last_pass_started_at"]).total_seconds()
            ),
            "pass_in_progress": None
            if state["pass_started_at"] is None
            else {
                "started_at": state["pass_started_at"].isoformat(),
                "ranges": pass_ranges,
                "ranges_done": done,
                "ranges_total": sum(pass_ranges.values()),
            },
        }
    return out


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _age(now: dt.datetime, then: dt.datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()
