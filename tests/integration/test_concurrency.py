"""Concurrent writes to one entity: versions grow by exactly 1, one event per change, in order.

Two API instances (two apps, two database pools) hammer the same row at once,
as two replicas of a service behind a load balancer would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from aiokafka import ConsumerRecord

from tests.harness import GOODS, ORDER, Env
from tests.integration.test_order_api import parse_time
from tests.integration.test_outbox_events import wait_for_outbox

PER_CLIENT = 50


@pytest.fixture(autouse=True)
async def _journal(env: Env) -> None:
    """wait_for_outbox counts the events written in the outbox journal."""
    await env.journal_outbox("order")
    await env.journal_outbox("goods")


def events_of(messages: list[ConsumerRecord], aggregate_id: int) -> list[dict[str, Any]]:
    """The values of one aggregate's events, in their partition's order."""
    mine = [m for m in messages if m.key == str(aggregate_id).encode()]
    assert len({m.partition for m in mine}) <= 1, "one aggregate's events spread over partitions"
    return [json.loads(m.value) for m in sorted(mine, key=lambda m: m.offset)]


def check_versions(created: dict[str, Any], responses: list[httpx.Response], allowed: set[int]) -> dict[int, Any]:
    """Every response is 200 or an allowed refusal; the 200s carry versions 2..N+1, each once."""
    by_version: dict[int, Any] = {}
    for resp in responses:
        assert resp.status_code == 200 or resp.status_code in allowed, f"{resp.status_code}: {resp.text}"
        if resp.status_code == 200:
            body = resp.json()
            assert body["id"] == created["id"]
            assert body["version"] not in by_version, f"version {body['version']} answered twice"
            by_version[body["version"]] = body
    assert sorted(by_version) == list(range(2, 2 + len(by_version))), sorted(by_version)
    return by_version


def check_events(events: list[dict[str, Any]], created: dict[str, Any], by_version: dict[int, Any]) -> None:
    """Events 1..N, each once, in order; event v carries exactly what response v said."""
    versions = [e["aggregate_version"] for e in events]
    assert versions == list(range(1, 2 + len(by_version))), versions
    assert len({e["event_id"] for e in events}) == len(events)
    bodies = {1: created, **by_version}
    for event in events:
        body = bodies[event["aggregate_version"]]
        for key, value in event["data"].items():
            if key in ("created_at", "updated_at"):
                assert parse_time(value) == parse_time(body[key]), (event, body)
            else:
                assert value == body[key], (event, body)


async def storm(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], url: str, requests: list[dict[str, Any]]
) -> list[httpx.Response]:
    """All requests at once, alternating between the two API instances."""
    return await asyncio.gather(*(clients[i % 2].patch(url, **kwargs) for i, kwargs in enumerate(requests)))


async def test_concurrent_order_patches(env: Env) -> None:
    env.start_relay("order")
    async with env.client("order") as a, env.client("order") as b:
        created = (await a.post("/v1/order", json={"user_id": 1})).json()
        url = f"/v1/order/{created['id']}"
        requests: list[dict[str, Any]] = [{"json": {"user_id": 1000 + i}} for i in range(2 * PER_CLIENT)]
        responses = await storm((a, b), url, requests)

        by_version = check_versions(created, responses, allowed=set())
        assert len(by_version) == 2 * PER_CLIENT  # nothing refused them
        final = (await a.get(url)).json()
        assert final["version"] == 1 + len(by_version)
        assert final == by_version[final["version"]]  # the last change answered is the state

    await wait_for_outbox(env, "order", 1 + len(by_version))
    check_events(events_of(await env.read_topic(ORDER), created["id"]), created, by_version)


async def test_concurrent_goods_patches_with_and_without_if_match(env: Env) -> None:
    env.start_relay("goods")
    async with env.client("goods") as a, env.client("goods") as b:
        created = (await a.post("/v1/goods", json={"order_id": 1, "name": "lamp"})).json()
        url = f"/v1/goods/{created['id']}"
        requests: list[dict[str, Any]] = []
        for i in range(2 * PER_CLIENT):
            changes: list[dict[str, Any]] = [{"order_id": 1 + i % 5}, {"name": f"n{i}"}, {"order_id": 7, "name": None}]
            change = changes[i % 3]
            if i % 2:  # an optimistic writer: some guesses hit the current version, most do not
                requests.append({"json": change, "headers": {"If-Match": f'"{1 + i // 4}"'}})
            else:
                requests.append({"json": change})
        responses = await storm((a, b), url, requests)

        by_version = check_versions(created, responses, allowed={412})
        assert len(by_version) >= PER_CLIENT  # those without If-Match all succeed
        final = (await a.get(url)).json()
        assert final["version"] == 1 + len(by_version)
        assert final == by_version[final["version"]]

    await wait_for_outbox(env, "goods", 1 + len(by_version))
    check_events(events_of(await env.read_topic(GOODS), created["id"]), created, by_version)


async def test_concurrent_patches_and_a_delete(env: Env) -> None:
    """The delete lands between two PATCHes: all before it succeed, all after it are 404."""
    env.start_relay("goods")
    async with env.client("goods") as a, env.client("goods") as b:
        created = (await a.post("/v1/goods", json={"order_id": 1, "name": "lamp"})).json()
        url = f"/v1/goods/{created['id']}"
        n = 2 * PER_CLIENT

        async def patch(i: int) -> httpx.Response:
            return await (a, b)[i % 2].patch(url, json={"order_id": 100 + i})

        async def delete() -> httpx.Response:
            await asyncio.sleep(0.01)
            return await b.delete(url)

        *responses, deleted = await asyncio.gather(*(patch(i) for i in range(n)), delete())
        assert deleted.status_code == 204, deleted.text
        by_version = check_versions(created, responses, allowed={404})
        assert (await a.get(url)).status_code == 404

    await wait_for_outbox(env, "goods", 2 + len(by_version))
    events = events_of(await env.read_topic(GOODS), created["id"])
    *changes, last = events
    check_events(changes, created, by_version)
    assert last["event_type"] == "goods.deleted"
    assert last["aggregate_version"] == 2 + len(by_version)
    final_state = by_version.get(1 + len(by_version), created)
    assert last["data"]["order_id"] == final_state["order_id"], "goods.deleted must carry the last order_id"
