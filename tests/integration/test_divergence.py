"""The divergence sampler in a real consumer process (order_history/ops/watch.py, sampler.py).

A manual edit of the read model is found within the stated bound, counted
steps and not seconds, so that a slow machine cannot fail it; `status` and the
consumer's /metrics show it, and `reconcile --repair` clears it. Under a steady
write load whose events are in flight at every check, and held back by a
blocked consumer for a while, nothing is counted as divergent. A restarted
consumer resumes the pass where the last one left it; of two consumer
processes one samples, and the other takes over when the first goes.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Mapping
from typing import Any

import asyncpg
import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import ManagedProcess, free_port
from devstack.startup import readyz
from order_history.ops.watch import TrustWatch
from tests.harness import Env, command, wait_until

_STATE = """SELECT steps, passes, pass_started_at, last_pass_started_at, pass_ranges,
                   (SELECT count(*) FROM (SELECT DISTINCT entity, id FROM divergent_rows
                                          WHERE confirmed_at IS NOT NULL) AS d) AS divergent,
                   (SELECT count(*) FROM divergent_rows WHERE confirmed_at IS NULL) AS unconfirmed,
                   now() AS now
            FROM divergence_sampler"""


def consumer_process(env: Env, sampler: Mapping[str, str]) -> tuple[ManagedProcess, int]:
    """`order-history consumer` as a process with these ORDER_HISTORY_DIVERGENCE_* settings; its metrics port."""
    port = free_port()
    proc = env.process("order-history-consumer", "order_history", "consumer")
    proc.env = {
        **(proc.env or {}),
        "ORDER_HISTORY_METRICS_PORT": str(port),
        **{f"ORDER_HISTORY_DIVERGENCE_{name}": value for name, value in sampler.items()},
    }
    proc.start()
    return proc, port


async def scrape(port: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


async def metric_reaches(port: int, name: str, value: float, timeout: float = 120) -> None:
    async def reached() -> bool:
        if await asyncio.to_thread(readyz, port) is None:
            return False
        return (await scrape(port)).get(name) == value

    await wait_until(reached, timeout, f"{name} == {value} on the consumer's /metrics")


async def state(env: Env) -> asyncpg.Record | None:
    return await (await env.pool("order_history")).fetchrow(_STATE)


async def history(env: Env) -> tuple[list[int], list[int]]:
    """12 orders and 40 goods through the APIs; their ids."""
    async with env.client("order") as orders, env.client("goods") as goods:
        order_ids = [(await orders.post("/v1/order", json={"user_id": 100 + i})).json()["id"] for i in range(12)]
        goods_ids = [
            (await goods.post("/v1/goods", json={"order_id": order_ids[i % 12], "name": f"item {i}"})).json()["id"]
            for i in range(40)
        ]
    return order_ids, goods_ids


async def clean_pass_after(env: Env, timeout: float = 120) -> asyncpg.Record:
    """Wait for a pass that began after now to complete, and for nothing to differ; the state then."""
    now = await state(env)
    since = None if now is None else now["now"]
    found: list[asyncpg.Record] = []

    async def clean() -> bool:
        row = await state(env)
        if row is None or row["last_pass_started_at"] is None:
            return False
        if since is not None and row["last_pass_started_at"] <= since:
            return False
        found[:] = [row]
        return bool(row["divergent"] == 0 and row["unconfirmed"] == 0)

    await wait_until(clean, timeout, "a complete pass of the sampler with nothing differing")
    return found[0]


async def status_json(env: Env) -> Any:
    result = await command(env, "order_history", "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


SMALL = {"INTERVAL": "0.5", "RANGES": "3", "RANGE_SIZE": "4", "SETTLE": "2"}


async def test_a_manual_edit_is_found_within_the_bound_shown_and_repaired(env: Env) -> None:
    env.start_relay("order")
    env.start_relay("goods")
    consumer, port = consumer_process(env, SMALL)
    order_ids, goods_ids = await history(env)
    await env.wait_outbox_drained()
    await env.wait_caught_up()
    await clean_pass_after(env)
    await metric_reaches(port, "read_model_divergent_rows", 0)
    scraped = await scrape(port)
    assert scraped["read_model_reconcile_full_pass_age_seconds"] >= 0
    assert scraped["read_model_reconcile_ranges_total"] > 0

    # Three rows of the read model changed by hand: a count, a name, a row deleted.
    read = await env.pool("order_history")
    tampered_order, renamed, lost = order_ids[3], goods_ids[11], goods_ids[10]
    await read.execute("UPDATE orders SET goods_count = goods_count + 5 WHERE id = $1", tampered_order)
    await read.execute("UPDATE goods SET name = 'forged' WHERE id = $1", renamed)
    await read.execute("DELETE FROM goods WHERE id = $1", lost)
    edited = await state(env)
    assert edited is not None
    found: list[asyncpg.Record] = []

    async def counted() -> bool:
        row = await state(env)
        assert row is not None and row["divergent"] <= 3
        found[:] = [row]
        return bool(row["divergent"] == 3)

    await wait_until(counted, 180, "the sampler to count the three edited rows")
    # The bound, in steps: a pass of U ranges takes ceil(U / R) steps, the settle time at most
    # ceil(settle / T) more (each step starts T after the last ended), plus the step under way
    # at the edit and the one that confirms (docs/operations.md, "The divergence sampler").
    # U: the orders' and the counts' ranges of 4 ids, and the goods'.
    ranges = 2 * (max(order_ids) // 4 + 1) + max(goods_ids) // 4 + 1
    bound = math.ceil(ranges / 3) + math.ceil(2 / 0.5) + 2
    assert found[0]["steps"] - edited["steps"] <= bound, (found[0]["steps"], edited["steps"], bound)

    await metric_reaches(port, "read_model_divergent_rows", 3)
    report = await status_json(env)
    divergence = report["divergence"]
    assert divergence["divergent_rows"] == 3
    rows = {(d["entity"], d["id"], d["field"]): (d["command"], d["read"]) for d in divergence["divergent"]}
    count = await (await env.pool("goods")).fetchval("SELECT count(*) FROM goods WHERE order_id = $1", tampered_order)
    assert rows == {
        ("order", tampered_order, "goods_count"): (str(count), str(count + 5)),
        ("goods", renamed, "name"): ("item 11", "forged"),
        ("goods", lost, "exists"): ("yes", "no"),
    }
    assert divergence["sampler"]["passes"] >= 1 and divergence["sampler"]["range_size"] == 4
    text = await command(env, "order_history", "status")
    assert text.returncode == 0, text.stderr
    assert "divergence: 3 divergent row(s)" in text.stdout
    assert f"goods {renamed} name: command side 'item 11', read model 'forged'" in text.stdout

    # A restarted consumer resumes the pass in progress (or completes it), never starts over.
    consumer.stop(timeout=10)
    stopped = await state(env)
    assert stopped is not None
    consumer.start()

    async def stepped() -> bool:
        row = await state(env)
        return row is not None and row["steps"] > stopped["steps"]

    try:
        await wait_until(stepped, 120, "the restarted consumer's sampler to step")
    except AssertionError:
        print(consumer.log_file.read_text()[-6000:], await state(env))
        raise
    resumed = await state(env)
    assert resumed is not None and resumed["passes"] >= stopped["passes"]
    if stopped["pass_started_at"] is not None and resumed["passes"] == stopped["passes"]:
        assert resumed["pass_started_at"] == stopped["pass_started_at"]

    result = await command(env, "order_history", "reconcile", "--repair", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    await metric_reaches(port, "read_model_divergent_rows", 0)
    assert (await status_json(env))["divergence"]["divergent"] == []


async def test_writes_in_flight_under_load_are_not_divergence(env: Env) -> None:
    env.start_relay("order")
    env.start_relay("goods")
    # Every range is visited again well within the settle time, so each in-flight
    # difference is seen at several checks before it is applied.
    _, port = consumer_process(env, {"INTERVAL": "0.3", "RANGES": "4", "RANGE_SIZE": "40", "SETTLE": "30"})
    # The consumer running and caught up, and the sampler stepping, before the load starts.
    async with env.client("order") as orders:
        assert (await orders.post("/v1/order", json={"user_id": 1})).status_code == 201
    await env.wait_outbox_drained()
    await env.wait_caught_up(120)
    await clean_pass_after(env)
    rng = random.Random(7)
    writing = True
    written = 0

    async def write() -> None:
        # A steady load the pipeline keeps up with, through the APIs: creates, moves, renames and
        # deletes, some goods naming an order not created yet.
        nonlocal written
        async with env.client("order") as orders, env.client("goods") as goods:
            while writing:
                roll = rng.random()
                top_order, top_goods = max(1, written // 3), max(1, written // 2)
                if roll < 0.25:
                    answer = await orders.post("/v1/order", json={"user_id": rng.randint(1, 50)})
                elif roll < 0.65:
                    body = {"order_id": rng.randint(1, top_order + 3), "name": f"item-{rng.randint(1, 99)}"}
                    answer = await goods.post("/v1/goods", json=body)
                elif roll < 0.75:
                    answer = await goods.patch(
                        f"/v1/goods/{rng.randint(1, top_goods)}", json={"order_id": rng.randint(1, top_order)}
                    )
                elif roll < 0.85:
                    answer = await goods.patch(
                        f"/v1/goods/{rng.randint(1, top_goods)}", json={"name": f"renamed-{rng.randint(1, 9)}"}
                    )
                elif roll < 0.92:
                    answer = await goods.delete(f"/v1/goods/{rng.randint(1, top_goods)}")
                elif roll < 0.97:
                    answer = await orders.patch(
                        f"/v1/order/{rng.randint(1, top_order)}", json={"user_id": rng.randint(1, 50)}
                    )
                else:
                    answer = await orders.delete(f"/v1/order/{rng.randint(1, top_order)}")
                assert answer.status_code in (200, 201, 204, 404), answer.text
                written += answer.status_code != 404
                await asyncio.sleep(0.01)

    writers = [asyncio.create_task(write()) for _ in range(2)]
    seen_in_flight = 0

    async def sampled() -> asyncpg.Record:
        for writer in writers:
            if writer.done():
                writer.result()  # a writer that failed fails the test now
        row = await state(env)
        assert row is not None
        assert row["divergent"] == 0, "a write in flight was counted as divergence"
        return row

    try:
        passes_at_start = -1
        while True:
            row = await sampled()
            seen_in_flight = max(seen_in_flight, row["unconfirmed"])
            if passes_at_start < 0:
                passes_at_start = row["passes"]
            if row["passes"] >= passes_at_start + 3 and written > 1000:
                break
            await asyncio.sleep(0.1)
        # The consumer held back for a moment (less than the settle time): every write meanwhile
        # differs at several checks, and is applied before it could count.
        async with (await env.pool("order_history")).acquire() as conn, conn.transaction():
            await conn.execute("SELECT * FROM consumer_positions FOR UPDATE")
            for _ in range(20):
                seen_in_flight = max(seen_in_flight, (await sampled())["unconfirmed"])
                await asyncio.sleep(0.1)
        for _ in range(100):
            seen_in_flight = max(seen_in_flight, (await sampled())["unconfirmed"])
            await asyncio.sleep(0.1)
    finally:
        writing = False
        await asyncio.gather(*writers, return_exceptions=True)
    assert seen_in_flight > 0  # the sampler did see the writes in flight
    await env.wait_outbox_drained()
    await env.wait_caught_up()
    after = await clean_pass_after(env)
    assert after["divergent"] == 0
    await metric_reaches(port, "read_model_divergent_rows", 0)
    agree = await command(env, "order_history", "reconcile")
    assert agree.returncode == 0, agree.stdout


async def test_one_consumer_process_samples_and_another_takes_over_where_it_stood(env: Env) -> None:
    # Rows only the read model has: 8 ranges of 4 ids (1 of orders, 6 of goods, 1 of counts), one a step.
    await env.as_owner(
        "order_history",
        """INSERT INTO orders (id, user_id, version, known, goods_count) VALUES (1, 1, 1, true, 20);
           INSERT INTO goods (id, order_id, name, version) SELECT i, 1, 'g', 1 FROM generate_series(1, 20) AS i""",
    )
    settings = env.history_settings().model_copy(
        update={"divergence_range_size": 4, "divergence_ranges": 1, "divergence_settle": 3600.0}
    )
    first, second = TrustWatch(settings, "first"), TrustWatch(settings, "second")
    cursor = "SELECT steps, passes, pass_started_at, cursor_check, cursor_range FROM divergence_sampler"
    read = await env.pool("order_history")
    try:
        for _ in range(3):
            await first.tick()
        await second.tick()  # standing by: it reads the figures, and samples nothing
        assert (first.holding, second.holding) == (True, False)
        before = await read.fetchrow(cursor)
        assert before is not None
        assert tuple(before.values())[:2] == (3, 0) and (before["cursor_check"], before["cursor_range"]) == ("goods", 2)
        # Compared so far: orders 0-3 (order 1), goods 0-3 (goods 1 to 3), goods 4-7.
        assert REGISTRY.get_sample_value("read_model_divergence_unconfirmed_rows") == 1 + 3 + 4
        assert REGISTRY.get_sample_value("read_model_divergent_rows") == 0  # not settled yet

        await first.close()  # its session ends, and the lock with it
        await second.tick()
        assert second.holding
        after = await read.fetchrow(cursor)
        assert after is not None
        assert (after["steps"], after["passes"], after["pass_started_at"]) == (4, 0, before["pass_started_at"])
        assert (after["cursor_check"], after["cursor_range"]) == ("goods", 3)
        for _ in range(4):  # goods 3 to 5, counts 0: the pass is complete
            await second.tick()
        done = await state(env)
        assert done is not None and done["passes"] == 1 and done["last_pass_started_at"] == before["pass_started_at"]
    finally:
        await first.close()
        await second.close()
