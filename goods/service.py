"""Goods commands: each writes the goods row and its event in one transaction (one statement).

The goods service does not ask the order service whether an order exists:
goods may name an order that has not been announced yet (SPEC.md).
"""

from __future__ import annotations

from typing import NoReturn

import asyncpg

from goods import repository
from goods.schemas import GoodsPublic
from shared.batching import Batcher
from shared.commands import NotFound, VersionMismatch
from shared.database import Connection


def _public(row: asyncpg.Record) -> GoodsPublic:
    return GoodsPublic(
        id=row["id"],
        order_id=row["order_id"],
        name=row["name"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def goods_creator(pool: asyncpg.Pool) -> Batcher[tuple[int, str | None], asyncpg.Record]:
    """Concurrent creates share one statement and one commit (group commit)."""
    return Batcher(pool, repository.insert_many)


async def create_goods(
    creator: Batcher[tuple[int, str | None], asyncpg.Record], order_id: int, name: str | None
) -> GoodsPublic:
    return _public(await creator.submit((order_id, name)))


async def get_goods(pool: asyncpg.Pool, goods_id: int) -> GoodsPublic:
    async with pool.acquire() as conn:
        row = await repository.get(conn, goods_id)
    if row is None:
        raise NotFound("goods", goods_id)
    return _public(row)


async def update_goods(
    pool: asyncpg.Pool,
    goods_id: int,
    order_id: int | None,
    set_name: bool,
    name: str | None,
    expected_version: int | None,
) -> GoodsPublic:
    async with pool.acquire() as conn:
        row = await repository.update(conn, goods_id, order_id, set_name, name, expected_version)
        if row is None:
            await _refusal(conn, goods_id, expected_version)
    return _public(row)


async def delete_goods(pool: asyncpg.Pool, goods_id: int, expected_version: int | None) -> None:
    async with pool.acquire() as conn:
        if await repository.delete(conn, goods_id, expected_version) is None:
            await _refusal(conn, goods_id, expected_version)


async def _refusal(conn: Connection, goods_id: int, expected_version: int | None) -> NoReturn:
    current = await repository.current_version(conn, goods_id)
    if current is None:
        raise NotFound("goods", goods_id)
    raise VersionMismatch("goods", goods_id, expected_version, current)
