"""Writes through the public APIs, and what order-history must then say about them.

Each Writer changes only the orders and goods it created itself, one request at
a time, so that what the stack must show afterwards is known exactly, however
many writers run side by side and whatever is killed meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx


@dataclass
class Expected:
    """What the command services accepted: live orders (id -> user), deleted orders, live goods
    (id -> (order, name))."""

    orders: dict[int, int] = field(default_factory=dict)
    deleted_orders: set[int] = field(default_factory=set)
    goods: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    # Accepted writes per topic: one event each on order.events / goods.events.
    events: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return sum(self.events.values())

    def detail(self, order_id: int) -> tuple[int, list[tuple[int, str | None]]] | None:
        """(user_id, [(goods id, name)] by id) that GET /v1/order-history/{id} must show; None: 404."""
        if order_id not in self.orders:
            return None
        goods = sorted((gid, name) for gid, (oid, name) in self.goods.items() if oid == order_id)
        return self.orders[order_id], goods


def client(base_url: str) -> httpx.AsyncClient:
    """A client that drops a connection idle for a second: before the server's keep-alive timeout
    (uvicorn: 5 s) can close it under a request, which would leave that request's outcome unknown."""
    return httpx.AsyncClient(base_url=base_url, timeout=30, limits=httpx.Limits(keepalive_expiry=1.0))


class Writer:
    """A random mix of creates, moves, renames and deletes of its own orders and goods."""

    def __init__(self, order: httpx.AsyncClient, goods: httpx.AsyncClient, expected: Expected, seed: int) -> None:
        self.order = order
        self.goods = goods
        self.expected = expected
        self.rng = random.Random(seed)
        self.my_orders: list[int] = []  # live or deleted
        self.my_goods: list[int] = []  # live

    def _accepted(self, response: httpx.Response, *statuses: int) -> httpx.Response:
        assert response.status_code in statuses, (
            f"{response.request.method} {response.request.url} -> {response.status_code} {response.text[:300]}"
        )
        return response

    async def step(self) -> None:
        rng, exp = self.rng, self.expected
        live = [o for o in self.my_orders if o in exp.orders]
        roll = rng.random()
        if roll < 0.2 or not live:
            user = rng.randint(1, 1000)
            r = self._accepted(await self.order.post("/v1/order", json={"user_id": user}), 201)
            oid = int(r.json()["id"])
            exp.orders[oid] = user
            self.my_orders.append(oid)
            exp.events["order.events"] += 1
        elif roll < 0.6 or not self.my_goods:
            oid = rng.choice(self.my_orders)  # now and then a deleted order: the goods exist, order-history hides them
            name = f"item-{rng.randint(1, 99)}"
            r = self._accepted(await self.goods.post("/v1/goods", json={"order_id": oid, "name": name}), 201)
            gid = int(r.json()["id"])
            exp.goods[gid] = (oid, name)
            self.my_goods.append(gid)
            exp.events["goods.events"] += 1
        elif roll < 0.72:
            gid, oid = rng.choice(self.my_goods), rng.choice(live)
            self._accepted(await self.goods.patch(f"/v1/goods/{gid}", json={"order_id": oid}), 200)
            exp.goods[gid] = (oid, exp.goods[gid][1])
            exp.events["goods.events"] += 1
        elif roll < 0.8:
            gid = rng.choice(self.my_goods)
            new_name = rng.choice([None, f"renamed-{rng.randint(1, 9)}"])
            self._accepted(await self.goods.patch(f"/v1/goods/{gid}", json={"name": new_name}), 200)
            exp.goods[gid] = (exp.goods[gid][0], new_name)
            exp.events["goods.events"] += 1
        elif roll < 0.88:
            gid = self.my_goods.pop(rng.randrange(len(self.my_goods)))
            self._accepted(await self.goods.delete(f"/v1/goods/{gid}"), 204)
            del exp.goods[gid]
            exp.events["goods.events"] += 1
        elif roll < 0.95:
            oid, user = rng.choice(live), rng.randint(1, 1000)
            self._accepted(await self.order.patch(f"/v1/order/{oid}", json={"user_id": user}), 200)
            exp.orders[oid] = user
            exp.events["order.events"] += 1
        else:
            oid = rng.choice(live)
            self._accepted(await self.order.delete(f"/v1/order/{oid}"), 204)
            del exp.orders[oid]
            exp.deleted_orders.add(oid)
            exp.events["order.events"] += 1


class Load:
    """`writers` Writers side by side until stopped, each pausing `pace` seconds between writes (a
    steady load that a slow restart does not turn into tens of thousands of writes to check);
    `progressed` waits for more accepted writes."""

    def __init__(self, urls: Mapping[str, str], writers: int = 4, seed: int = 1, pace: float = 0.05) -> None:
        self.urls = urls
        self.expected = Expected()
        self.writers = writers
        self.seed = seed
        self.pace = pace
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._clients: list[httpx.AsyncClient] = []

    async def __aenter__(self) -> Load:
        order, goods = client(self.urls["order"]), client(self.urls["goods"])
        self._clients = [order, goods]
        for i in range(self.writers):
            writer = Writer(order, goods, self.expected, seed=self.seed * 1000 + i)
            self._tasks.append(asyncio.create_task(self._run(writer)))
        return self

    async def _run(self, writer: Writer) -> None:
        while not self._stop.is_set():
            await writer.step()
            await asyncio.sleep(self.pace)

    def check(self) -> None:
        """Raise the first writer's failure, if one failed."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("a writer failed") from task.exception()

    async def progressed(self, more: int, timeout: float = 120) -> None:
        target = self.expected.accepted + more
        deadline = asyncio.get_running_loop().time() + timeout
        while self.expected.accepted < target:
            self.check()
            assert asyncio.get_running_loop().time() < deadline, f"fewer than {more} writes accepted in {timeout:.0f}s"
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures and exc[0] is None:
            raise AssertionError(f"{len(failures)} writer(s) failed") from failures[0]


async def writes(urls: Mapping[str, str], count: int, seed: int) -> Expected:
    """`count` accepted writes by one writer, one after the other."""
    expected = Expected()
    async with client(urls["order"]) as order, client(urls["goods"]) as goods:
        writer = Writer(order, goods, expected, seed=seed)
        while expected.accepted < count:
            await writer.step()
    return expected
