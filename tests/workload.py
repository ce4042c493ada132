"""Random writes through the real command services (service layer or HTTP)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx

from goods import service as goods_service
from order import service as order_service
from shared.refusals import NotFound


@dataclass
class WorkloadStats:
    accepted: int = 0
    not_found: int = 0


Op = Callable[[random.Random], Awaitable[bool]]


class Workload:
    """A mix of creates, renames, moves and deletes of orders and goods.

    Goods sometimes name an order that does not exist yet (it is created later).
    """

    def __init__(self, order_pool: asyncpg.Pool, goods_pool: asyncpg.Pool) -> None:
        self.order_pool = order_pool
        self.goods_pool = goods_pool
        self.order_creator = order_service.order_creator(order_pool)
        self.goods_creator = goods_service.goods_creator(goods_pool)
        self.max_order = 0
        self.max_goods = 0
        self.stats = WorkloadStats()

    async def step(self, rng: random.Random) -> None:
        roll = rng.random()
        try:
            if roll < 0.25 or self.max_order == 0:
                order = await order_service.create_order(self.order_creator, rng.randint(1, 500))
                self.max_order = max(self.max_order, order.id)
            elif roll < 0.70 or self.max_goods == 0:
                order_id = rng.randint(1, self.max_order + 3)
                goods = await goods_service.create_goods(self.goods_creator, order_id, f"item-{rng.randint(1, 99)}")
                self.max_goods = max(self.max_goods, goods.id)
            elif roll < 0.82:
                gid = rng.randint(1, self.max_goods)
                if rng.random() < 0.5:
                    await goods_service.update_goods(
                        self.goods_pool, gid, rng.randint(1, self.max_order + 2), False, None, None
                    )
                else:
                    await goods_service.update_goods(
                        self.goods_pool, gid, None, True, f"renamed-{rng.randint(1, 9)}", None
                    )
            elif roll < 0.88:
                await goods_service.delete_goods(self.goods_pool, rng.randint(1, self.max_goods), None)
            elif roll < 0.94:
                await order_service.update_order(
                    self.order_pool, rng.randint(1, self.max_order), rng.randint(1, 500), None
                )
            else:
                await order_service.delete_order(self.order_pool, rng.randint(1, self.max_order), None)
            self.stats.accepted += 1
        except NotFound:
            self.stats.not_found += 1

    async def run(
        self, accepted: int, seed: int, concurrency: int = 8, until: Callable[[], bool] | None = None
    ) -> WorkloadStats:
        """Run until `accepted` writes were accepted and, when given, `until()` holds.

        A fault test passes `until` to keep the load going until it has made
        all its faults, however fast the machine writes.
        """
        rng = random.Random(seed)

        def more() -> bool:
            return self.stats.accepted < accepted or (until is not None and not until())

        async def worker() -> None:
            while more():
                await self.step(rng)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return self.stats


async def http_workload(order: httpx.AsyncClient, goods: httpx.AsyncClient, ops: int, seed: int) -> int:
    """The same kind of mix through the HTTP APIs; returns accepted writes. Any 5xx fails."""
    rng = random.Random(seed)
    max_order = 0
    max_goods = 0
    accepted = 0
    for _ in range(ops):
        roll = rng.random()
        if roll < 0.25 or max_order == 0:
            r = await order.post("/v1/order", json={"user_id": rng.randint(1, 50)})
            max_order = max(max_order, r.json()["id"]) if r.status_code == 201 else max_order
        elif roll < 0.70 or max_goods == 0:
            r = await goods.post("/v1/goods", data={"orderId": str(rng.randint(1, max_order + 2)), "name": "x"})
            max_goods = max(max_goods, r.json()["id"]) if r.status_code == 201 else max_goods
        elif roll < 0.85:
            r = await goods.patch(
                f"/v1/goods/{rng.randint(1, max_goods)}", json={"order_id": rng.randint(1, max_order)}
            )
        elif roll < 0.92:
            r = await goods.delete(f"/v1/goods/{rng.randint(1, max_goods)}")
        elif roll < 0.96:
            r = await order.patch(f"/v1/order/{rng.randint(1, max_order)}", json={"user_id": rng.randint(1, 50)})
        else:
            r = await order.delete(f"/v1/order/{rng.randint(1, max_order)}")
        assert r.status_code < 500, r.text
        if r.status_code in (200, 201, 204):
            accepted += 1
        else:
            assert r.status_code == 404, r.text
    return accepted
