"""`order-history reconcile [--repair] [--json]`: the command databases against the read model.

Three checks, each over id ranges of `range_size` ids:

- orders: every order the order service has is in the read model, live, with
  its user; no live order there that the service does not have;
- goods: the same for goods, with their order and name;
- counts: every order's goods_count equals the number of goods the goods
  service has naming it.

Nothing moves whole tables: each database first computes, per id range, the
row count and a sum of 64-bit hashes of the compared fields; only the rows of
ranges whose figures differ are then read and compared. The command databases
are read through their reader roles, the read model through the API's.

The databases are read one after another, not in one snapshot: a write still
on its way through the pipeline shows as a difference, which a second run (or
`--repair`, which waits and checks again) tells from drift.

`--repair` asks the command services to resync the entities that differ
(`order resync --ids`, `goods resync --ids`, run with this process's
environment), waits until the read model agrees on them, then checks again.
A row the read model has and the command side does not (`exists`: no / yes)
is asked for with `--remove-unassigned` and the highest version the read model
holds for those rows: an id its service deleted is published as deleted for
good; one its sequence has not handed out yet (another producer's, or lost by
a restore from backup) as removed at that version, which is also where the
service will start the entity it later creates with that id (shared/command/resync.py).
The repair waits only for the snapshots the services say they published, and
stops waiting for one that can no longer apply: the read model holds a newer
version of its entity than the snapshot and than the command side.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from order_history.projection.columns import GOODS, ORDERS, Entity
from order_history.settings import Settings
from shared import progress
from shared.database import WAIT_OUT_ERRORS
from shared.events import MAX_VERSION

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Check:
    """One comparison: the same fields read from a command database and from the read model.

    Each SQL text has `{where}`, filled with a condition on `{key}` (an id range
    or a list of ids); `hashed` is the fields as one text, for the range sums.
    A row missing on one side counts as `absent`.
    """

    name: str
    entity: str  # what an id names: order or goods
    source: str  # the command database: order or goods
    fields: tuple[str, ...]
    command_rows: str  # SELECT id, fields...
    read_rows: str
    absent: Row  # the fields of a missing row
    key_command: str = "id"
    key_read: str = "id"

    def hashed(self, sql: str) -> str:
        """Per range: (range, rows, sum of hashes) of the rows `sql` selects (columns id, fields...)."""
        text = "concat_ws(',', id, " + ", ".join(f"quote_nullable({f})" for f in self.fields) + ")"
        return f"SELECT id / $1 AS r, count(*) AS n, sum(hashtextextended({text}, 0)) AS h FROM ({sql}) AS x GROUP BY 1"


def _rows_check(entity: Entity, source: str, live: str) -> Check:
    """The check of an entity's compared columns (order_history/projection/columns.py): the same names in its
    command database's table and in the read model's, where `live` says which read rows count."""
    fields = ", ".join(entity.compared)
    return Check(
        name=entity.table,
        entity=entity.name,
        source=source,
        fields=entity.compared,
        command_rows=f"SELECT id, {fields} FROM {entity.table} WHERE {{where}}",
        read_rows=f"SELECT id, {fields} FROM {entity.table} WHERE {live} AND {{where}}",
        absent=(None,) * len(entity.compared),
    )


CHECKS: tuple[Check, ...] = (
    _rows_check(ORDERS, "order", "known AND NOT deleted"),
    _rows_check(GOODS, "goods", "NOT deleted"),
    Check(
        name="counts",
        entity="order",
        source="goods",
        fields=("goods_count",),
        command_rows="SELECT order_id AS id, count(*) AS goods_count FROM goods WHERE {where} GROUP BY order_id",
        read_rows="SELECT id, goods_count FROM orders WHERE goods_count <> 0 AND {where}",
        absent=(0,),
        key_command="order_id",
    ),
)


@dataclass(frozen=True)
class Difference:
    entity: str
    id: int
    field: str
    command: str
    read: str

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "id": self.id, "field": self.field, "command": self.command, "read": self.read}


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def differences(check: Check, command: Mapping[int, Row], read: Mapping[int, Row]) -> list[Difference]:
    """What differs between the two sides' rows (id -> fields) of `check`."""
    out = []
    for entity_id in sorted(command.keys() | read.keys()):
        ours, theirs = command.get(entity_id), read.get(entity_id)
        if check.name != "counts" and (ours is None) != (theirs is None):
            exists = ("yes", "no") if theirs is None else ("no", "yes")
            out.append(Difference(check.entity, entity_id, "exists", *exists))
            continue
        ours, theirs = ours or check.absent, theirs or check.absent
        for name, a, b in zip(check.fields, ours, theirs, strict=True):
            if a != b:
                out.append(Difference(check.entity, entity_id, name, _shown(a), _shown(b)))
    return out


@dataclass
class Report:
    differences: list[Difference] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # per check: rows on the command side
    ranges: int = 0
    ranges_differing: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "differences": [d.as_dict() for d in self.differences],
            "compared": self.rows,
            "ranges": self.ranges,
            "ranges_differing": self.ranges_differing,
        }


class Reconciler:
    def __init__(self, settings: Settings, range_size: int = 10000, read_database_url: str | None = None) -> None:
        """`read_database_url`: the read model's database as another role reads it (the
        divergence sampler reads the primary as the consumer does, never a replica); else the API's."""
        self.settings = settings
        self.range_size = range_size
        self.read_database_url = read_database_url or settings.query_database_url
        self.conns: dict[str, asyncpg.Connection[asyncpg.Record]] = {}

    async def __aenter__(self) -> Reconciler:
        s = self.settings
        urls = {
            "order": s.order_reader_database_url,
            "goods": s.goods_reader_database_url,
            "read": self.read_database_url,
        }
        try:
            for name, url in urls.items():
                self.conns[name] = await asyncpg.connect(url, timeout=10)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        for conn in self.conns.values():
            await conn.close()
        self.conns.clear()

    async def _rows(self, check: Check, side: str, where: str, *args: Any) -> dict[int, Row]:
        if side == "read":
            sql, key = check.read_rows, check.key_read
        else:
            sql, key = check.command_rows, check.key_command
        rows = await self.conns[side].fetch(sql.format(where=where.format(key=key)), *args)
        return {r[0]: tuple(r)[1:] for r in rows}

    async def _both(self, check: Check, where: str, *args: Any) -> list[Difference]:
        command = await self._rows(check, check.source, where, *args)
        read = await self._rows(check, "read", where, *args)
        return differences(check, command, read)

    async def _sums(self, check: Check, side: str) -> dict[int, tuple[int, Any]]:
        """Per id range of the whole table: its rows and their hashes' sum."""
        sql = check.read_rows if side == "read" else check.command_rows
        rows = await self.conns[side].fetch(check.hashed(sql.format(where="true")), self.range_size)
        return {r["r"]: (r["n"], r["h"]) for r in rows}

    async def compare(self) -> Report:
        report = Report()
        bar = progress.bar("reconcile", total=len(CHECKS), unit="check")
        for check in CHECKS:
            command = await self._sums(check, check.source)
            read = await self._sums(check, "read")
            report.rows[check.name] = sum(n for n, _ in command.values())
            ranges = command.keys() | read.keys()
            differing = sorted(r for r in ranges if command.get(r) != read.get(r))
            report.ranges += len(ranges)
            report.ranges_differing += len(differing)
            for r in differing:
                low, high = r * self.range_size, (r + 1) * self.range_size
                report.differences += await self._both(check, "{key} >= $1 AND {key} < $2", low, high)
            bar.update(1)
        bar.close()
        return report

    async def range_differences(self, check: Check, number: int) -> list[Difference]:
        """The differences of `check` in id range `number` alone (ids number * range_size and up):
        the range's row count and hash sum on each side first, its rows only when those differ."""
        low, high = number * self.range_size, (number + 1) * self.range_size
        sums = []
        for side, sql, key in (
            (check.source, check.command_rows, check.key_command),
            ("read", check.read_rows, check.key_read),
        ):
            text = check.hashed(sql.format(where=f"{key} >= $2 AND {key} < $3"))
            row = await self.conns[side].fetchrow(text, self.range_size, low, high)
            sums.append(None if row is None else (row["n"], row["h"]))
        if sums[0] == sums[1]:
            return []
        return await self._both(check, "{key} >= $1 AND {key} < $2", low, high)

    async def id_ranges(self, check: Check) -> int:
        """How many id ranges `check` spans now: up to the highest id either side's table holds
        (its primary key, or the goods' order_id index for the counts)."""
        highest = [
            await self.conns[check.source].fetchval(f"SELECT max({check.key_command}) FROM {_TABLES[check.source]}"),
            await self.conns["read"].fetchval(f"SELECT max({check.key_read}) FROM {_TABLES[check.entity]}"),
        ]
        known = [h for h in highest if h is not None]
        return max(known) // self.range_size + 1 if known else 0

    async def write_ages(self, check: Check, ids: Sequence[int]) -> dict[int, float]:
        """Per id: seconds since the command side last wrote a row `check` compares for it (their
        updated_at, on that database's clock); an id without such rows is left out.

        For a check of an aggregate (its command key is not the id: the counts), those rows are
        the source's rows that name the id on the command side, and those that name it, live, in
        the read model: a goods item moved to another order is dated by its move. A row deleted on
        the command side is gone, and has no date."""
        if not ids:
            return {}
        wanted = sorted(set(ids))
        key, table = check.key_command, _TABLES[check.source]
        command = self.conns[check.source]
        age = "extract(epoch FROM now() - max(updated_at))::float8"
        rows = await command.fetch(
            f"SELECT {key} AS id, {age} AS age FROM {table} WHERE {key} = ANY($1::bigint[]) GROUP BY 1", wanted
        )
        ages = {r["id"]: r["age"] for r in rows}
        if key != "id":
            members = await self.conns["read"].fetch(
                f"SELECT id, {key} AS owner FROM {table} WHERE {key} = ANY($1::bigint[]) AND NOT deleted", wanted
            )
            owner = {r["id"]: r["owner"] for r in members}
            if owner:
                dated = await command.fetch(
                    f"SELECT id, {age} AS age FROM {table} WHERE id = ANY($1::bigint[]) GROUP BY 1", sorted(owner)
                )
                for r in dated:
                    i = owner[r["id"]]
                    ages[i] = min(r["age"], ages.get(i, r["age"]))
        return ages

    async def versions(self, side: str, entity: str, ids: Sequence[int]) -> dict[int, int]:
        """The version of each of these entities' rows, on the command side or in the read model
        (tombstones and placeholders included: each is a version later events are held to)."""
        conn = self.conns["read" if side == "read" else entity]
        rows = await conn.fetch(f"SELECT id, version FROM {_TABLES[entity]} WHERE id = ANY($1::bigint[])", ids)
        return {r["id"]: r["version"] for r in rows}

    async def compare_ids(self, orders: Iterable[int], goods: Iterable[int]) -> list[Difference]:
        """The differences of these entities only."""
        ids = {"order": sorted(set(orders)), "goods": sorted(set(goods))}
        out: list[Difference] = []
        for check in CHECKS:
            if ids[check.entity]:
                out += await self._both(check, "{key} = ANY($1::bigint[])", ids[check.entity])
        return out


# Each entity's table, the same name in its command database and in the read model.
_TABLES = {"order": "orders", "goods": "goods"}
ENTITIES = tuple(_TABLES)


def _ids(found: Sequence[Difference], entity: str) -> list[int]:
    return sorted({d.id for d in found if d.entity == entity})


@dataclass(frozen=True)
class Request:
    """One `<service> resync --ids ...` of the repair; `remove_unassigned`: its `--remove-unassigned`."""

    service: str
    ids: tuple[int, ...]
    remove_unassigned: int | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", self.service, "resync", "--json", "--ids", ",".join(map(str, self.ids))]
        if self.remove_unassigned is not None:
            argv += ["--remove-unassigned", str(self.remove_unassigned)]
        return argv


def requests(found: Sequence[Difference], read_versions: Mapping[str, Mapping[int, int]]) -> list[Request]:
    """The resyncs that repair `found`, given the read model's version of each entity named there.

    A row only the read model has is removed, if its id was never handed out,
    at the highest version the read model holds among those rows: at or above
    each of them, so that every copy of their events stays out, and the
    service's floor for the ids. A version with nothing above it cannot be a
    floor (the entity created later would have no version to start at); such a
    row goes with the others, and is deleted for good if its id was handed out,
    else left as it is (reported, not waited for).
    """
    out = []
    for entity in ENTITIES:
        extra = {d.id for d in found if d.entity == entity and d.field == "exists" and d.command == "no"}
        versions = read_versions.get(entity, {})
        removable = sorted(i for i in extra if versions.get(i, 0) < MAX_VERSION)
        rest = sorted(set(_ids(found, entity)) - set(removable))
        if rest:
            out.append(Request(entity, tuple(rest)))
        if removable:
            version = max([1, *(versions.get(i, 0) for i in removable)])
            out.append(Request(entity, tuple(removable), version))
    return out


def out_of_reach(
    published: Mapping[int, int], read_versions: Mapping[int, int], command_versions: Mapping[int, int]
) -> set[int]:
    """Ids whose snapshot can no longer apply, and no other event can fix instead: the read
    model holds a newer version than the snapshot published for it and than the command side has.
    (A snapshot applies over a row whose version is not newer; every event on its way from the
    command side is at most the version it has now.)"""
    return {i for i, v in published.items() if read_versions.get(i, 0) > max(v, command_versions.get(i, 0))}


async def _resync(request: Request) -> dict[int, int]:
    """`<service> resync --ids ...`, as the operator would run it (same environment); the
    version of the snapshot it published for each id (an id it skipped is not there)."""
    argv = request.argv()
    result = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        raise RepairError(f"{request.service} resync failed: {result.stderr.strip() or result.stdout.strip()}")
    try:
        snapshots = json.loads(result.stdout)["snapshots"]
        return {int(k): int(v) for k, v in snapshots.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RepairError(f"{request.service} resync printed no snapshots: {result.stdout.strip()[:200]}") from exc


class RepairError(Exception):
    """A resync the repair asked for failed."""


_FAILURES: tuple[type[Exception], ...] = (*WAIT_OUT_ERRORS, RepairError)


async def repair(reconciler: Reconciler, found: Sequence[Difference], timeout: float) -> list[Difference]:
    """Resync what differs, wait until the read model agrees on the ids whose snapshots were
    published (or `timeout`, or until they cannot apply any more); what still differs."""
    ids = {entity: _ids(found, entity) for entity in ENTITIES}
    read_versions = {entity: await reconciler.versions("read", entity, ids[entity]) for entity in ENTITIES}
    waiting: dict[str, dict[int, int]] = {entity: {} for entity in ENTITIES}  # entity -> id -> snapshot version
    # Each resync is a process of its own (most of its time is starting up): all at once.
    asked = requests(found, read_versions)
    for request, published in zip(asked, await asyncio.gather(*map(_resync, asked)), strict=True):
        waiting[request.service].update(published)
    deadline = time.monotonic() + timeout
    while True:
        left = await reconciler.compare_ids(waiting["order"], waiting["goods"])
        differing = {entity: {d.id for d in left if d.entity == entity} for entity in ENTITIES}
        for entity in ENTITIES:
            pending = {i: v for i, v in waiting[entity].items() if i in differing[entity]}
            if pending:
                read = await reconciler.versions("read", entity, sorted(pending))
                command = await reconciler.versions("command", entity, sorted(pending))
                for i in out_of_reach(pending, read, command):
                    del pending[i]
            waiting[entity] = pending
        if not any(waiting.values()) or time.monotonic() > deadline:
            return await reconciler.compare_ids(ids["order"], ids["goods"])
        await asyncio.sleep(0.5)


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
