"""The whole system as processes: APIs, relays and consumers, driven over HTTP.

Everything is real: uvicorn processes, PostgreSQL, Kafka. The final read model
must equal what the command databases say.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from devstack.processes import ManagedProcess
from devstack.startup import readyz
from tests.harness import Env, command, wait_until
from tests.readmodel import command_snapshot, read_model_snapshot, recount_mismatches
from tests.workload import Workload, http_workload


async def assert_read_model_matches_command_databases(env: Env) -> None:
    await env.wait_outbox_drained()
    await env.wait_caught_up(timeout=120)
    expected = await command_snapshot(await env.pool("order"), await env.pool("goods"))
    actual = await read_model_snapshot(await env.pool("order_history"))
    assert actual.goods == expected.goods
    assert actual.orders == expected.orders
    assert await recount_mismatches(await env.pool("order_history")) == 0
    assert expected.orders, "the workload produced no orders"
    # The second oracle: what an operator would run.
    reconciled = await command(env, "order_history", "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    report = json.loads(reconciled.stdout)
    assert report["differences"] == [] and report["compared"]["goods"] == len(expected.goods)


def start_services(env: Env) -> None:
    for name, args in (
        ("order-api", ("order", "api")),
        ("goods-api", ("goods", "api")),
        ("history-api", ("order_history", "api")),
        ("order-relay", ("order", "relay")),
        ("goods-relay", ("goods", "relay")),
    ):
        env.process(name, *args).start()


async def wait_ready(env: Env) -> None:
    ports = [env.stack.config.order_port, env.stack.config.goods_port, env.stack.config.history_port]

    async def ready() -> bool:
        return all(await asyncio.gather(*(asyncio.to_thread(readyz, p) for p in ports))) and all(
            readyz(p) == 200 for p in ports
        )

    await wait_until(ready, 60, "the three APIs to be ready")


async def test_http_end_to_end_history_matches_command_databases(env: Env) -> None:
    start_services(env)
    env.process("consumer", "order_history", "consumer").start()
    await wait_ready(env)
    async with env.http("order") as order, env.http("goods") as goods, env.http("order_history") as history:
        accepted = await http_workload(order, goods, ops=600, seed=5)
        assert accepted > 400
        await assert_read_model_matches_command_databases(env)

        expected = await command_snapshot(await env.pool("order"), await env.pool("goods"))
        for threshold in (0, 1, 2, 3, 5):
            ids: list[int] = []
            offset = 0
            while True:
                page = await history.get(
                    "/v1/order-history", params={"threshold": threshold, "limit": 7, "offset": offset}
                )
                assert page.status_code == 200
                data = page.json()["data"]
                for item in data:
                    assert item["goods_count"] == expected.orders[item["id"]][1] > threshold
                    assert item["user_id"] == expected.orders[item["id"]][0]
                ids += [item["id"] for item in data]
                if len(data) < 7:
                    break
                offset += 7
            assert ids == expected.listed(threshold)
        some = expected.listed(0)[0]
        detail = (await history.get(f"/v1/order-history/{some}")).json()
        assert detail["goods_count"] == len(detail["goods"]) == expected.orders[some][1]
        assert sorted(g["id"] for g in detail["goods"]) == sorted(
            gid for gid, (oid, _) in expected.goods.items() if oid == some
        )


async def test_freshness_a_write_is_visible_in_history(env: Env) -> None:
    start_services(env)
    env.process("consumer", "order_history", "consumer").start()
    await wait_ready(env)
    async with env.http("order") as order, env.http("goods") as goods, env.http("order_history") as history:
        oid = (await order.post("/v1/order", json={"user_id": 1})).json()["id"]
        await goods.post("/v1/goods", json={"order_id": oid, "name": "lamp"})

        async def visible() -> bool:
            r = await history.get(f"/v1/order-history/{oid}")
            return r.status_code == 200 and r.json()["goods_count"] == 1

        await wait_until(visible, 30, "the order and its goods in order-history")
        gid = (await goods.post("/v1/goods", json={"order_id": oid})).json()["id"]
        await goods.delete(f"/v1/goods/{gid - 1}")

        async def updated() -> bool:
            r = await history.get(f"/v1/order-history/{oid}")
            return [g["id"] for g in r.json()["goods"]] == [gid]

        await wait_until(updated, 30, "the delete and the new goods in order-history")
        await order.delete(f"/v1/order/{oid}")

        async def gone() -> bool:
            return (await history.get(f"/v1/order-history/{oid}")).status_code == 404

        await wait_until(gone, 30, "the deleted order to leave order-history")


KILLS = 5


@pytest.mark.slow
async def test_consumer_killed_at_random_points_loses_and_doubles_nothing(env: Env) -> None:
    """kill -9 of the consumer, KILLS times, each while it applies a stream of at least 50,000 events.

    The writes go on until every kill has been made (however fast the machine
    writes), so each restarted consumer has events to apply before it is
    killed again.
    """
    env.start_relay("order")
    env.start_relay("goods")
    consumer = env.process("consumer", "order_history", "consumer")
    consumer.start()
    workload = Workload(await env.pool("order"), await env.pool("goods"))
    killed = asyncio.Event()
    writes = asyncio.create_task(workload.run(accepted=50_000, seed=42, concurrency=12, until=killed.is_set))
    rng = random.Random(1)
    for _ in range(KILLS):
        # Kill it while it is applying: after it has made progress since its (re)start.
        applied = sum((await env.positions()).values())

        async def progressed(mark: int = applied) -> bool:
            return sum((await env.positions()).values()) > mark

        await wait_until(progressed, 90, "the restarted consumer to apply events")
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        consumer.kill9()
        consumer.start()
    killed.set()
    stats = await writes
    assert stats.accepted >= 50_000
    await assert_read_model_matches_command_databases(env)


async def _log_count(process: ManagedProcess, message: str) -> int:
    try:
        return process.log_file.read_text(errors="replace").count(message)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
async def test_two_consumers_and_rebalances_lose_and_double_nothing(env: Env) -> None:
    """A second consumer joins (rebalance), then the first is killed (rebalance after its session
    expires), each during the writes. Every step waits for the group to have done what it names."""
    env.start_relay("order")
    env.start_relay("goods")
    first = env.process("consumer-a", "order_history", "consumer")
    second = env.process("consumer-b", "order_history", "consumer")
    first.start()
    workload = Workload(await env.pool("order"), await env.pool("goods"))
    done = asyncio.Event()
    writes = asyncio.create_task(workload.run(accepted=15_000, seed=7, concurrency=8, until=done.is_set))

    async def writes_reach(n: int) -> None:
        await wait_until(lambda: _accepted_over(workload, n), 180, f"{n} writes")

    async def logged(process: ManagedProcess, message: str, times: int) -> None:
        async def seen() -> bool:
            return await _log_count(process, message) >= times

        await wait_until(seen, 120, f"{process.name} to log {message!r} {times} time(s)")

    await logged(first, "partitions assigned", 1)
    await writes_reach(3000)
    second.start()  # joins the group: the first gives partitions up, the second takes its share
    await logged(first, "partitions revoked", 1)
    await logged(second, "partitions assigned", 1)
    await writes_reach(workload.stats.accepted + 3000)
    assignments = await _log_count(second, "partitions assigned")
    first.kill9()  # dies: the group notices after the session timeout and gives the second everything
    await logged(second, "partitions assigned", assignments + 1)
    await writes_reach(workload.stats.accepted + 3000)
    done.set()
    await writes
    await assert_read_model_matches_command_databases(env)


async def _accepted_over(workload: Workload, n: int) -> bool:
    return workload.stats.accepted >= n
