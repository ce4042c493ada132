"""Order commands: each writes the order and its event in one transaction."""

from __future__ import annotations

from typing import NoReturn

import asyncpg

from order import repository
from order.schemas import OrderPublic
from shared import outbox
from shared.commands import NotFound, VersionMismatch
from shared.database import Connection
from shared.events import OrderData, OrderDeletedData, new_event


def _public(row: asyncpg.Record) -> OrderPublic:
    return OrderPublic(
        id=row["id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


def _data(order: OrderPublic) -> OrderData:
    return OrderData(id=order.id, user_id=order.user_id, created_at=order.created_at, updated_at=order.updated_at)


async def create_order(pool: asyncpg.Pool, user_id: int) -> OrderPublic:
    async with pool.acquire() as conn, conn.transaction():
        order = _public(await repository.insert(conn, user_id))
        await outbox.append(conn, new_event("order.created", order.id, order.version, _data(order)))
    return order


async def get_order(pool: asyncpg.Pool, order_id: int) -> OrderPublic:
    async with pool.acquire() as conn:
        row = await repository.get(conn, order_id)
    if row is None:
        raise NotFound("order", order_id)
    return _public(row)


async def update_order(pool: asyncpg.Pool, order_id: int, user_id: int, expected_version: int | None) -> OrderPublic:
    async with pool.acquire() as conn, conn.transaction():
        row = await repository.update(conn, order_id, user_id, expected_version)
        if row is None:
            await _refusal(conn, order_id, expected_version)
        order = _public(row)
        await outbox.append(conn, new_event("order.updated", order.id, order.version, _data(order)))
    return order


async def delete_order(pool: asyncpg.Pool, order_id: int, expected_version: int | None) -> None:
    async with pool.acquire() as conn, conn.transaction():
        row = await repository.delete(conn, order_id, expected_version)
        if row is None:
            await _refusal(conn, order_id, expected_version)
        data = OrderDeletedData(
            id=row["id"], user_id=row["user_id"], created_at=row["created_at"], updated_at=row["deleted_at"]
        )
        await outbox.append(conn, new_event("order.deleted", row["id"], row["version"] + 1, data))


async def _refusal(conn: Connection, order_id: int, expected_version: int | None) -> NoReturn:
    current = await repository.current_version(conn, order_id)
    if current is None:
        raise NotFound("order", order_id)
    raise VersionMismatch("order", order_id, expected_version, current)
