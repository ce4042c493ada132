"""Query plans in the bench: EXPLAIN ANALYZE texts and their timings, and the statements a call runs."""

from __future__ import annotations

from typing import Any

import asyncpg


class Recorder:
    """Stands in for an asyncpg connection and remembers the statements run on it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.calls.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.calls.append((sql, args))
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self.calls.append((sql, args))
        return await self.conn.fetchval(sql, *args)


async def explain(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...]) -> str:
    rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    return "\n".join(r[0] for r in rows)


def plan_times(text: str) -> tuple[float, float]:
    """(planning ms, execution ms) from EXPLAIN ANALYZE output."""
    values = {"Planning Time": float("nan"), "Execution Time": float("nan")}
    for line in text.splitlines():
        for key in values:
            if line.strip().startswith(key + ":"):
                values[key] = float(line.split(":")[1].split()[0])
    return values["Planning Time"], values["Execution Time"]
