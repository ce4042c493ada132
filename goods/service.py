"""Goods commands: each writes the goods row and its event in one transaction (one statement).

The goods service does not ask the order service whether an order exists:
goods may name an order that has not been announced yet.
"""

from __future__ import annotations

import asyncpg

from goods import repository
from goods.repository import GOODS
from goods.schemas import GoodsPublic
from shared.batching import Batcher
from shared.command import service as command_service

Item = tuple[int, str | None, int | None]  # (order_id, name, price_cents) of a create: repository.FIELDS


def goods_creator(pool: asyncpg.Pool) -> Batcher[Item, asyncpg.Record]:
    """Concurrent creates share one statement and one commit (group commit)."""
    return command_service.creator(pool, repository.insert_many)


async def create_goods(
    creator: Batcher[Item, asyncpg.Record], order_id: int, name: str | None, price_cents: int | None = None
) -> GoodsPublic:
    return await command_service.create(GOODS, creator, (order_id, name, price_cents))  # repository.FIELDS order


async def get_goods(pool: asyncpg.Pool, goods_id: int) -> GoodsPublic:
    return await command_service.get(pool, GOODS, goods_id)


async def update_goods(
    pool: asyncpg.Pool,
    goods_id: int,
    order_id: int | None,
    set_name: bool,
    name: str | None,
    expected_version: int | None,
    *,
    set_price: bool = False,
    price_cents: int | None = None,
) -> GoodsPublic:
    """Move (order_id not None), rename (set_name) and/or reprice (set_price) the goods."""
    # per field of repository.FIELDS: set it?, value
    args = (order_id is not None, order_id, set_name, name, set_price, price_cents)
    return await command_service.update(pool, GOODS, repository.UPDATE, goods_id, args, expected_version)


async def delete_goods(pool: asyncpg.Pool, goods_id: int, expected_version: int | None) -> None:
    await command_service.delete(pool, GOODS, goods_id, expected_version)
