"""What the read model must say: computed from events, or from the command databases."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import asyncpg
import orjson

from shared.events import Event, GoodsData, GoodsDeletedData, OrderData, OrderDeletedData, new_event

T0 = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Snapshot:
    """Listed orders (id -> (user_id, goods_count)) and live goods (id -> (order_id, name))."""

    orders: dict[int, tuple[int, int]]
    goods: dict[int, tuple[int, str | None]]

    def listed(self, threshold: int) -> list[int]:
        return sorted(oid for oid, (_, count) in self.orders.items() if count > threshold)


@dataclass
class ExpectedModel:
    """The apply rule of SPEC.md, in plain Python: newest version wins, deletes are tombstones."""

    orders: dict[int, tuple[int, bool, int | None]] = field(default_factory=dict)  # id -> (version, deleted, user)
    goods: dict[int, tuple[int, bool, int, str | None]] = field(default_factory=dict)  # id -> (v, deleted, order, name)

    def apply(self, event: Event) -> None:
        data = event.data
        if isinstance(data, OrderData | OrderDeletedData):
            seen = self.orders.get(event.aggregate_id)
            if seen is None or seen[0] < event.aggregate_version:
                user = data.user_id if data.user_id is not None else (seen[2] if seen else None)
                self.orders[event.aggregate_id] = (event.aggregate_version, event.event_type == "order.deleted", user)
        else:
            assert isinstance(data, GoodsData | GoodsDeletedData)
            seen_g = self.goods.get(event.aggregate_id)
            if seen_g is None or seen_g[0] < event.aggregate_version:
                deleted = event.event_type == "goods.deleted"
                name = seen_g[3] if deleted and seen_g else data.name
                self.goods[event.aggregate_id] = (event.aggregate_version, deleted, data.order_id, name)

    def snapshot(self) -> Snapshot:
        live_goods = {gid: (o, n) for gid, (_, deleted, o, n) in self.goods.items() if not deleted}
        counts: dict[int, int] = {}
        for order_id, _ in live_goods.values():
            counts[order_id] = counts.get(order_id, 0) + 1
        orders = {
            oid: (user, counts.get(oid, 0))
            for oid, (_, deleted, user) in self.orders.items()
            if not deleted and user is not None
        }
        return Snapshot(orders=orders, goods=live_goods)


async def read_model_snapshot(history: asyncpg.Pool) -> Snapshot:
    orders = await history.fetch("SELECT id, user_id, goods_count FROM orders WHERE known AND NOT deleted")
    goods = await history.fetch("SELECT id, order_id, name FROM goods WHERE NOT deleted")
    return Snapshot(
        orders={r["id"]: (r["user_id"], r["goods_count"]) for r in orders},
        goods={r["id"]: (r["order_id"], r["name"]) for r in goods},
    )


async def command_snapshot(orders_db: asyncpg.Pool, goods_db: asyncpg.Pool) -> Snapshot:
    goods = {r["id"]: (r["order_id"], r["name"]) for r in await goods_db.fetch("SELECT id, order_id, name FROM goods")}
    counts: dict[int, int] = {}
    for order_id, _ in goods.values():
        counts[order_id] = counts.get(order_id, 0) + 1
    orders = {
        r["id"]: (r["user_id"], counts.get(r["id"], 0)) for r in await orders_db.fetch("SELECT id, user_id FROM orders")
    }
    return Snapshot(orders=orders, goods=goods)


async def recount_mismatches(history: asyncpg.Pool) -> int:
    """Orders whose stored goods_count differs from a recount of the goods table."""
    value = await history.fetchval(
        """SELECT count(*) FROM orders o
           WHERE o.goods_count <> (SELECT count(*) FROM goods g WHERE g.order_id = o.id AND NOT g.deleted)"""
    )
    return int(value)


# -- event streams -------------------------------------------------------------
def order_created(oid: int, user: int, version: int = 1) -> Event:
    return new_event(
        "order.created" if version == 1 else "order.updated",
        oid,
        version,
        OrderData(id=oid, user_id=user, created_at=T0, updated_at=T0 + dt.timedelta(seconds=version)),
    )


def order_deleted(oid: int, version: int) -> Event:
    return new_event("order.deleted", oid, version, OrderDeletedData(id=oid))


def goods_event(gid: int, version: int, order_id: int, name: str | None = None) -> Event:
    return new_event(
        "goods.created" if version == 1 else "goods.updated",
        gid,
        version,
        GoodsData(id=gid, order_id=order_id, name=name, created_at=T0, updated_at=T0 + dt.timedelta(seconds=version)),
    )


def goods_deleted(gid: int, version: int, order_id: int) -> Event:
    return new_event("goods.deleted", gid, version, GoodsDeletedData(id=gid, order_id=order_id))


def random_stream(rng: random.Random, n_events: int, n_orders: int) -> Iterator[Event]:
    """A plausible history: orders created, goods added, renamed, moved, deleted; some orders deleted.

    Goods often name orders whose own event comes later. Per aggregate, versions grow by one.
    """
    order_versions: dict[int, int] = {}
    goods_state: dict[int, tuple[int, int, bool]] = {}  # id -> (version, order_id, deleted)
    next_goods = 1
    for _ in range(n_events):
        roll = rng.random()
        if roll < 0.15:
            oid = rng.randint(1, n_orders)
            version = order_versions.get(oid, 0) + 1
            if version > 1 and rng.random() < 0.1:
                order_versions[oid] = version
                yield order_deleted(oid, version)
            elif version == 1 or rng.random() < 0.5:
                order_versions[oid] = version
                yield order_created(oid, rng.randint(1, 1000), version)
        elif roll < 0.6 or not goods_state:
            gid = next_goods
            next_goods += 1
            oid = rng.randint(1, n_orders)
            goods_state[gid] = (1, oid, False)
            yield goods_event(gid, 1, oid, f"g{gid}")
        else:
            gid = rng.randint(1, next_goods - 1)
            version, oid, deleted = goods_state[gid]
            if deleted:
                continue
            version += 1
            if roll < 0.75:
                goods_state[gid] = (version, oid, True)
                yield goods_deleted(gid, version, oid)
            else:
                new_oid = rng.randint(1, n_orders) if roll < 0.9 else oid
                goods_state[gid] = (version, new_oid, False)
                yield goods_event(gid, version, new_oid, f"g{gid}v{version}")


def encode(events: Iterable[Event]) -> list[tuple[str, bytes, bytes]]:
    """(contract topic, key, value) for each event."""
    return [(e.topic, e.key, e.to_json()) for e in events]


def raw_event(**fields: object) -> bytes:
    return orjson.dumps(fields)
