"""The transactional outbox, end to end: API write -> outbox row -> relay -> Kafka (SPEC.md, "Events on Kafka").

Exactly one event per accepted write, none for a refused one; each event is the
envelope of SPEC.md with the entity's whole state, keyed by the aggregate id,
and one entity's events keep their version order within their partition.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import ConsumerRecord

from shared.events import CATALOGUE, decode_event
from tests.harness import GOODS, ORDER, Env, wait_until
from tests.integration.test_order_api import parse_time

ENVELOPE_KEYS = {
    "event_id",
    "event_type",
    "schema_version",
    "aggregate_id",
    "aggregate_version",
    "occurred_at",
    "data",
}
DATA_KEYS = {
    ORDER: {"id", "user_id", "created_at", "updated_at"},
    GOODS: {"id", "order_id", "name", "price_cents", "created_at", "updated_at"},
}
TIMESTAMPS = ("created_at", "updated_at")


@dataclass(frozen=True)
class Expected:
    """The event one accepted write must produce."""

    topic: str
    event_type: str
    aggregate_id: int
    version: int
    state: dict[str, Any]  # the API's body after the change (before it, for a delete)


class Writes:
    """Sends writes, and records the event each accepted one must produce."""

    def __init__(self, order: httpx.AsyncClient, goods: httpx.AsyncClient) -> None:
        self.clients = {ORDER: order, GOODS: goods}
        self.expected: list[Expected] = []
        self.last: dict[tuple[str, int], dict[str, Any]] = {}

    @staticmethod
    def _topic(entity: str) -> str:
        return ORDER if entity == "order" else GOODS

    async def create(self, entity: str, **kwargs: Any) -> dict[str, Any]:
        topic = self._topic(entity)
        resp = await self.clients[topic].post(f"/v1/{entity}", **kwargs)
        assert resp.status_code == 201, resp.text
        body: dict[str, Any] = resp.json()
        assert body["version"] == 1
        self.expected.append(Expected(topic, f"{entity}.created", body["id"], 1, body))
        self.last[(topic, body["id"])] = body
        return body

    async def patch(self, entity: str, entity_id: int, **kwargs: Any) -> dict[str, Any]:
        topic = self._topic(entity)
        resp = await self.clients[topic].patch(f"/v1/{entity}/{entity_id}", **kwargs)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        assert body["version"] == self.last[(topic, entity_id)]["version"] + 1
        self.expected.append(Expected(topic, f"{entity}.updated", entity_id, body["version"], body))
        self.last[(topic, entity_id)] = body
        return body

    async def delete(self, entity: str, entity_id: int, **kwargs: Any) -> None:
        topic = self._topic(entity)
        resp = await self.clients[topic].delete(f"/v1/{entity}/{entity_id}", **kwargs)
        assert resp.status_code == 204, resp.text
        last = self.last.pop((topic, entity_id))
        self.expected.append(Expected(topic, f"{entity}.deleted", entity_id, last["version"] + 1, last))

    async def refused(self, entity: str, method: str, url: str, status: int, **kwargs: Any) -> None:
        resp = await self.clients[self._topic(entity)].request(method, url, **kwargs)
        assert resp.status_code == status, f"{method} {url}: {resp.status_code} {resp.text}"


async def all_published(env: Env, service: str, count: int) -> bool:
    """`count` events written (the journal) and none left unpublished (the outbox)."""
    pool = await env.pool(service)
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM outbox_journal) AS written, (SELECT count(*) FROM outbox) AS unpublished"
    )
    assert row is not None
    assert row["written"] <= count, f"{service}: {row['written']} outbox rows for {count} accepted writes"
    return bool(row["written"] == count and row["unpublished"] == 0)


async def wait_for_outbox(env: Env, service: str, count: int) -> None:
    async def published() -> bool:
        return await all_published(env, service, count)

    await wait_until(published, what=f"{service}: {count} outbox rows published")


def check_message(msg: ConsumerRecord, expected: Expected) -> dict[str, Any]:
    """Everything SPEC.md says about one event on the wire."""
    assert msg.key == str(expected.aggregate_id).encode(), (msg.key, expected)
    value: dict[str, Any] = json.loads(msg.value.decode("utf-8"))
    assert set(value) == ENVELOPE_KEYS, f"envelope keys {sorted(value)}"
    uuid.UUID(value["event_id"])
    assert value["event_type"] == expected.event_type
    assert type(value["schema_version"]) is int
    assert value["schema_version"] == CATALOGUE[expected.event_type].current  # producers write the newest
    assert type(value["aggregate_id"]) is int
    assert value["aggregate_id"] == expected.aggregate_id
    assert type(value["aggregate_version"]) is int
    assert value["aggregate_version"] == expected.version
    parse_time(value["occurred_at"])

    data = value["data"]
    assert isinstance(data, dict)
    keys = DATA_KEYS[expected.topic]
    state = expected.state
    if expected.event_type.endswith(".deleted"):
        assert set(data) <= keys, f"deleted data keys {sorted(data)}"
        assert data["id"] == expected.aggregate_id
        if expected.topic == GOODS:
            assert data["order_id"] == state["order_id"], "goods.deleted must carry the last order_id"
        for key in set(data) - {"id", "updated_at", *TIMESTAMPS}:
            assert data[key] == state[key], (key, data, state)
        if "created_at" in data:
            assert parse_time(data["created_at"]) == parse_time(state["created_at"])
    else:
        assert set(data) == keys, f"data keys {sorted(data)} != {sorted(keys)}"
        for key in keys - set(TIMESTAMPS):
            assert data[key] == state[key], (key, data, state)
        for key in TIMESTAMPS:
            assert parse_time(data[key]) == parse_time(state[key]), (key, data, state)

    decoded = decode_event(msg.value, expected.topic)
    assert decoded.event_id == uuid.UUID(value["event_id"])
    assert decoded.aggregate_id == expected.aggregate_id
    assert decoded.aggregate_version == expected.version
    return value


def check_partition_order(messages: list[ConsumerRecord], versions: dict[int, int]) -> None:
    """One entity's events sit in one partition, in increasing version order."""
    by_key: dict[bytes, list[ConsumerRecord]] = {}
    for msg in messages:
        by_key.setdefault(msg.key, []).append(msg)
    for key, msgs in by_key.items():
        assert len({m.partition for m in msgs}) == 1, f"key {key!r} spread over partitions"
        ordered = [versions[id(m)] for m in sorted(msgs, key=lambda m: m.offset)]
        assert ordered == sorted(ordered), f"key {key!r}: versions out of order in the partition: {ordered}"
        assert ordered == list(range(1, len(ordered) + 1)), f"key {key!r}: versions {ordered}"


async def test_one_event_per_accepted_write(env: Env) -> None:
    await env.journal_outbox("order")
    await env.journal_outbox("goods")
    env.start_relay("order")
    env.start_relay("goods")
    json_type = {"content-type": "application/json"}
    async with env.client("order") as order_client, env.client("goods") as goods_client:
        w = Writes(order_client, goods_client)

        # Orders: created three ways, patched, deleted.
        o1 = await w.create("order", json={"user_id": 1})
        o2 = await w.create("order", data={"userId": "2"})
        o3 = await w.create("order", params={"userId": "3"})
        # Goods: one names an order nobody announced.
        g1 = await w.create("goods", json={"order_id": o1["id"], "name": "lamp"})
        g2 = await w.create("goods", data={"orderId": str(o1["id"])})
        g3 = await w.create("goods", json={"order_id": 999, "name": "ghost"})

        await w.patch("order", o1["id"], json={"user_id": 11})
        await w.patch("order", o1["id"], json={"user_id": 12}, headers={"If-Match": '"2"'})
        await w.patch("goods", g1["id"], json={"name": "desk lamp"})
        await w.patch("goods", g2["id"], json={"order_id": o3["id"]})  # a move
        await w.patch("goods", g2["id"], json={"order_id": o1["id"], "name": "chair"}, headers={"If-Match": '"2"'})
        await w.patch("goods", g1["id"], json={"name": None})
        await w.delete("order", o2["id"])
        await w.patch("order", o3["id"], json={"user_id": 33})
        await w.delete("order", o3["id"], headers={"If-Match": '"2"'})
        await w.delete("goods", g1["id"])
        await w.delete("goods", g3["id"])

        # Refused writes: no event for any of them.
        o1_url, g2_url = f"/v1/order/{o1['id']}", f"/v1/goods/{g2['id']}"
        await w.refused("order", "PATCH", o1_url, 412, json={"user_id": 5}, headers={"If-Match": '"1"'})
        await w.refused("order", "DELETE", o1_url, 412, headers={"If-Match": '"9"'})
        await w.refused("order", "PATCH", o1_url, 422, json={"user_id": "x"})
        await w.refused("order", "POST", "/v1/order", 422, json={"user_id": 0})
        await w.refused("order", "POST", "/v1/order", 400, content=b"{", headers=json_type)
        await w.refused("order", "PATCH", f"/v1/order/{o2['id']}", 404, json={"user_id": 5})
        await w.refused("order", "DELETE", f"/v1/order/{o2['id']}", 404)
        await w.refused("goods", "PATCH", g2_url, 422, json={})
        await w.refused("goods", "PATCH", g2_url, 412, json={"name": "x"}, headers={"If-Match": '"1"'})
        await w.refused("goods", "POST", "/v1/goods", 422, json={"order_id": -1})
        await w.refused("goods", "POST", "/v1/goods", 400, content=b"x", headers={"content-type": "text/plain"})
        await w.refused("goods", "PATCH", f"/v1/goods/{g1['id']}", 404, json={"name": "x"})
        await w.refused("goods", "DELETE", f"/v1/goods/{g1['id']}", 404)

    expected = {topic: [e for e in w.expected if e.topic == topic] for topic in (ORDER, GOODS)}
    assert len(expected[ORDER]) == 8
    assert len(expected[GOODS]) == 9
    for service, topic in (("order", ORDER), ("goods", GOODS)):
        await wait_for_outbox(env, service, len(expected[topic]))

    event_ids: list[str] = []
    for service, topic in (("order", ORDER), ("goods", GOODS)):
        messages = await env.read_topic(topic)
        wanted = {(e.aggregate_id, e.version): e for e in expected[topic]}
        seen = [(int(json.loads(m.value)["aggregate_id"]), json.loads(m.value)["aggregate_version"]) for m in messages]
        assert sorted(seen) == sorted(wanted), f"{topic}: events {sorted(seen)}, want {sorted(wanted)}"
        versions: dict[int, int] = {}
        for msg, key in zip(messages, seen, strict=True):
            value = check_message(msg, wanted[key])
            event_ids.append(value["event_id"])
            versions[id(msg)] = value["aggregate_version"]
        check_partition_order(messages, versions)

        pool = await env.pool(service)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0, f"{service}: rows left unpublished"
        rows = await pool.fetch("SELECT event_id FROM outbox_journal")
        assert {str(r["event_id"]) for r in rows} == {json.loads(m.value)["event_id"] for m in messages}, (
            f"{service}: outbox event_ids differ from Kafka's"
        )
    assert len(event_ids) == len(set(event_ids)) == 17, "event_id must be unique per change"
