"""Order commands: each writes the order and its event in one transaction (one statement)."""

from __future__ import annotations

from typing import NoReturn

import asyncpg

from order import repository
from order.schemas import OrderPublic
from shared.batching import Batcher
from shared.commands import NotFound, VersionMismatch
from shared.database import Connection


def _public(row: asyncpg.Record) -> OrderPublic:
    return OrderPublic(
        id=row["id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def order_creator(pool: asyncpg.Pool) -> Batcher[int, asyncpg.Record]:
    """Concurrent creates share one statement and one commit (group commit)."""
    return Batcher(pool, repository.insert_many)


async def create_order(creator: Batcher[int, asyncpg.Record], user_id: int) -> OrderPublic:
    return _public(await creator.submit(user_id))


async def get_order(pool: asyncpg.Pool, order_id: int) -> OrderPublic:
    async with pool.acquire() as conn:
        row = await repository.get(conn, order_id)
    if row is None:
        raise NotFound("order", order_id)
    return _public(row)


async def update_order(pool: asyncpg.Pool, order_id: int, user_id: int, expected_version: int | None) -> OrderPublic:
    async with pool.acquire() as conn:
        row = await repository.update(conn, order_id, user_id, expected_version)
        if row is None:
            await _refusal(conn, order_id, expected_version)
    return _public(row)


async def delete_order(pool: asyncpg.Pool, order_id: int, expected_version: int | None) -> None:
    async with pool.acquire() as conn:
        if await repository.delete(conn, order_id, expected_version) is None:
            await _refusal(conn, order_id, expected_version)


async def _refusal(conn: Connection, order_id: int, expected_version: int | None) -> NoReturn:
    """Why a compare-and-set matched no row: the order is gone, or at another version."""
    current = await repository.current_version(conn, order_id)
    if current is None:
        raise NotFound("order", order_id)
    raise VersionMismatch("order", order_id, expected_version, current)
