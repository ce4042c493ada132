"""Order commands: each writes the order and its event in one transaction (one statement)."""

from __future__ import annotations

import asyncpg

from order import repository
from order.repository import ORDER
from order.schemas import OrderPublic
from shared.batching import Batcher
from shared.command import service as command_service


def order_creator(pool: asyncpg.Pool) -> Batcher[int, asyncpg.Record]:
    """Concurrent creates share one statement and one commit (group commit)."""
    return command_service.creator(pool, repository.insert_many)


async def create_order(creator: Batcher[int, asyncpg.Record], user_id: int) -> OrderPublic:
    return await command_service.create(ORDER, creator, user_id)


async def get_order(pool: asyncpg.Pool, order_id: int) -> OrderPublic:
    return await command_service.get(pool, ORDER, order_id)


async def update_order(pool: asyncpg.Pool, order_id: int, user_id: int, expected_version: int | None) -> OrderPublic:
    return await command_service.update(pool, ORDER, repository.UPDATE, order_id, (user_id,), expected_version)


async def delete_order(pool: asyncpg.Pool, order_id: int, expected_version: int | None) -> None:
    await command_service.delete(pool, ORDER, order_id, expected_version)
