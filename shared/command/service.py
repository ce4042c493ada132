"""What every command service (order, goods) does the same way, around its own SQL.

An `Entity` names a service's table, its columns, its events' data and its
public model; from it come the statements every entity has (get, delete with
its event, the current version) and the service functions below. Each write is
one statement that changes the row and inserts its outbox event (one
transaction); a compare-and-set that matches no row is explained afterwards:
the entity is gone (NotFound) or at another version (VersionMismatch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel

from shared.batching import Batcher, RunBatch
from shared.command import outbox
from shared.database import Connection
from shared.refusals import NotFound, VersionMismatch

P = TypeVar("P", bound=BaseModel)
Item = TypeVar("Item")


@dataclass(frozen=True)
class Entity(Generic[P]):
    name: str  # "order": also the path /v1/order and the event types order.*
    table: str
    columns: str  # what a write returns and a read shows, `version` included
    data: Mapping[str, str]  # the event's `data`, as SQL over the written row `w`
    public: type[P]
    get_sql: str = field(init=False)
    delete_sql: str = field(init=False)
    version_sql: str = field(init=False)

    def __post_init__(self) -> None:
        deleted = f"{self.name}.deleted"
        object.__setattr__(self, "get_sql", f"SELECT {self.columns} FROM {self.table} WHERE id = $1")
        object.__setattr__(
            self, "delete_sql", outbox.delete_with_event(self.table, deleted, dict(self.data), self.columns)
        )
        object.__setattr__(self, "version_sql", f"SELECT version FROM {self.table} WHERE id = $1")

    def public_of(self, row: asyncpg.Record) -> P:
        """The public form of a row this service wrote or read.

        Validated although trusted: pydantic's `model_construct` is plain Python and
        costs about three times its compiled validation (docs/benchmarks.md, "Hardening
        and metrics")."""
        return self.public.model_validate(dict(row.items()))


def creator(pool: asyncpg.Pool, insert_many: RunBatch[Item, asyncpg.Record]) -> Batcher[Item, asyncpg.Record]:
    """Concurrent creates share one statement and one commit (group commit, shared.batching)."""
    return Batcher(pool, insert_many)


async def create(entity: Entity[P], batcher: Batcher[Item, asyncpg.Record], item: Item) -> P:
    return entity.public_of(await batcher.submit(item))


async def get(pool: asyncpg.Pool, entity: Entity[P], entity_id: int) -> P:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(entity.get_sql, entity_id)
    if row is None:
        raise NotFound(entity.name, entity_id)
    return entity.public_of(row)


async def update(
    pool: asyncpg.Pool,
    entity: Entity[P],
    statement: str,
    entity_id: int,
    args: Sequence[Any],
    expected_version: int | None,
) -> P:
    """Run an update-with-event `statement` ($1 = id, then `args`, then the expected version or NULL)."""
    async with pool.acquire() as conn:
        for _ in range(_ATTEMPTS):
            row = await conn.fetchrow(statement, entity_id, *args, expected_version)
            if row is not None:
                return entity.public_of(row)
            await _refuse(conn, entity, entity_id, expected_version)
    raise NotFound(entity.name, entity_id)


async def delete(pool: asyncpg.Pool, entity: Entity[P], entity_id: int, expected_version: int | None) -> int:
    """Delete the entity; the version its deletion event carries (one past the row's last)."""
    async with pool.acquire() as conn:
        for _ in range(_ATTEMPTS):
            row = await conn.fetchrow(entity.delete_sql, entity_id, expected_version)
            if row is not None:
                return int(row["version"]) + 1
            await _refuse(conn, entity, entity_id, expected_version)
    raise NotFound(entity.name, entity_id)


# A write that matched no row although no version was asked for: the row was
# committed after the write's snapshot was taken (concurrent creates share
# statements, so a client can learn an id before another statement's rows
# commit). The write is run again, a bounded number of times.
_ATTEMPTS = 3


async def _refuse(conn: Connection, entity: Entity[Any], entity_id: int, expected_version: int | None) -> None:
    """Why a compare-and-set matched no row: the entity is gone, or at another version.

    Returns (so that the caller runs the write again) when no version was asked
    for and the row is there now.
    """
    current: int | None = await conn.fetchval(entity.version_sql, entity_id)
    if current is None:
        raise NotFound(entity.name, entity_id)
    if expected_version is not None:
        raise VersionMismatch(entity.name, entity_id, expected_version, current)
