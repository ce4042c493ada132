"""`Reconciler`: a check's rows read from a command database and from the read model, range by range.

Nothing moves whole tables: each database first computes, per id range of
`range_size` ids, the row count and a sum of 64-bit hashes of the compared
fields; only the rows of ranges whose figures differ are then read and
compared. The command databases are read through their reader roles, the read
model through the API's (or as `read_database_url` says). The databases are
read one after another, not in one snapshot.

Contract: `async with Reconciler(settings) as reconciler` holds one connection
per database, closed on the way out. `compare()` runs every check of
order_history/ops/checks.py over every range (the `reconcile` command);
`id_ranges()`, `range_differences()` and `write_ages()` are the divergence
sampler's (order_history/ops/sampler.py); `compare_ids()` and `versions()`
are what the repair reads (order_history/ops/repair.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from order_history.ops.checks import CHECKS, Check, Difference, Row, differences
from order_history.settings import Settings
from shared import progress


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
