"""Goods commands: each writes the goods row and its event in one transaction.

The goods service does not ask the order service whether an order exists:
goods may name an order that has not been announced yet (SPEC.md).
"""

from __future__ import annotations

from typing import NoReturn

import asyncpg

from goods import repository
from goods.schemas import GoodsPublic
from shared import outbox
from shared.commands import NotFound, VersionMismatch
from shared.database import Connection
from shared.events import GoodsData, GoodsDeletedData, new_event


def _public(row: asyncpg.Record) -> GoodsPublic:
    return GoodsPublic(
        id=row["id"],
        order_id=row["order_id"],
        name=row["name"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def _data(goods: GoodsPublic) -> GoodsData:
    return GoodsData(
        id=goods.id, order_id=goods.order_id, name=goods.name, created_at=goods.created_at, updated_at=goods.updated_at
    )


async def create_goods(pool: asyncpg.Pool, order_id: int, name: str | None) -> GoodsPublic:
    async with pool.acquire() as conn, conn.transaction():
        goods = _public(await repository.insert(conn, order_id, name))
        await outbox.append(conn, new_event("goods.created", goods.id, goods.version, _data(goods)))
    return goods


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
    async with pool.acquire() as conn, conn.transaction():
        row = await repository.update(conn, goods_id, order_id, set_name, name, expected_version)
        if row is None:
            await _refusal(conn, goods_id, expected_version)
        goods = _public(row)
        await outbox.append(conn, new_event("goods.updated", goods.id, goods.version, _data(goods)))
    return goods


async def delete_goods(pool: asyncpg.Pool, goods_id: int, expected_version: int | None) -> None:
    async with pool.acquire() as conn, conn.transaction():
        row = await repository.delete(conn, goods_id, expected_version)
        if row is None:
            await _refusal(conn, goods_id, expected_version)
        data = GoodsDeletedData(
            id=row["id"],
            order_id=row["order_id"],
            name=row["name"],
            created_at=row["created_at"],
            updated_at=row["deleted_at"],
        )
        await outbox.append(conn, new_event("goods.deleted", row["id"], row["version"] + 1, data))


async def _refusal(conn: Connection, goods_id: int, expected_version: int | None) -> NoReturn:
    current = await repository.current_version(conn, goods_id)
    if current is None:
        raise NotFound("goods", goods_id)
    raise VersionMismatch("goods", goods_id, expected_version, current)
