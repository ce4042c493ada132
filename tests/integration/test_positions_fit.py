"""Stored positions that do not fit the log stop the consumer loudly; it never skips or re-reads.

A topic recreated behind the positions (they are past its end), and retention
that deleted messages never applied (the positions are before the log's
start): the consumer applies nothing, says why, and `order-history
reset-positions` is the way out for the first.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from devstack.paths import REPO
from tests.harness import ORDER, Env, wait_until
from tests.readmodel import encode, order_created, read_model_snapshot


async def _admin(env: Env) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    return admin


async def _recreate_order_topic(env: Env) -> None:
    """Delete the order topic and create it again, empty."""
    admin = await _admin(env)
    try:
        await admin.delete_topics([env.topic(ORDER)])

        async def gone() -> bool:
            return env.topic(ORDER) not in await admin.list_topics()

        await wait_until(gone, 60, "the topic to be deleted")
    finally:
        await admin.close()
    await env.create_topics()


def _cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "order_history", *args],
        cwd=REPO,
        env={**env.process_env(), "LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_topic_recreated_behind_the_positions_stops_the_consumer_until_reset(env: Env) -> None:
    consumer = await env.start_consumer()
    await env.produce(encode([order_created(i, 1) for i in range(1, 61)]))
    await env.wait_caught_up()
    await consumer.stop()

    await _recreate_order_topic(env)
    await env.produce(encode([order_created(i, 2) for i in range(101, 107)]))  # 6 new orders, offsets from 0

    halted = await env.start_consumer()
    await wait_until(lambda: _true(bool(halted.halted)), 60, "the consumer to stop on the misfit")
    assert {m.kind for m in halted.halted} == {"past_log_end"}
    assert all(m.tp.topic == env.topic(ORDER) for m in halted.halted)
    await asyncio.sleep(0)  # nothing of the new topic is applied, however long it runs
    snapshot = await read_model_snapshot(await env.pool("order_history"))
    assert not set(snapshot.orders) & set(range(101, 107))
    refused = _cli(env, "reset-positions", "order.events", "--to", "start")
    assert refused.returncode == 1 and "stop them first" in refused.stderr  # it is still running
    await halted.stop()

    async def group_empty() -> bool:
        return _cli(env, "reset-positions", "order.events", "--to", "start").returncode == 0

    await wait_until(group_empty, 60, "the reset once the consumer left its group")
    await env.start_consumer()
    await env.wait_caught_up()
    snapshot = await read_model_snapshot(await env.pool("order_history"))
    assert set(range(101, 107)) <= set(snapshot.orders)
    assert len(snapshot.orders) == 66


async def test_messages_deleted_before_they_were_applied_stop_the_consumer(env: Env) -> None:
    consumer = await env.start_consumer()
    await env.produce(encode([order_created(i, 1) for i in range(1, 31)]))
    await env.wait_caught_up()
    await consumer.stop()
    await env.produce(encode([order_created(i, 1) for i in range(31, 61)]))  # never applied
    ends = await env.end_offsets((ORDER,))
    admin = await _admin(env)
    try:  # retention: everything but the last message of each partition is deleted
        await admin.delete_records({TopicPartition(t, p): RecordsToDelete(end - 1) for (t, p), end in ends.items()})
    finally:
        await admin.close()
    before = await read_model_snapshot(await env.pool("order_history"))

    halted = await env.start_consumer()
    await wait_until(lambda: _true(bool(halted.halted)), 60, "the consumer to stop on the misfit")
    assert {m.kind for m in halted.halted} == {"before_log_start"}
    assert "retention deleted messages" in halted.halted[0].reason
    assert await read_model_snapshot(await env.pool("order_history")) == before


async def _true(value: bool) -> bool:
    return value


async def test_a_recreated_topic_is_rebuilt_beside_the_halted_model(env: Env) -> None:
    """The other way out: `rebuild` while the halted consumer runs; restarted, it goes on."""
    consumer = await env.start_consumer()
    await env.produce(encode([order_created(i, 1) for i in range(1, 31)]))
    await env.wait_caught_up()
    await consumer.stop()
    await _recreate_order_topic(env)
    await env.produce(encode([order_created(i, 2) for i in range(101, 107)]))
    halted = await env.start_consumer()
    await wait_until(lambda: _true(bool(halted.halted)), 60, "the consumer to stop on the misfit")

    rebuilt = await asyncio.to_thread(_cli, env, "rebuild", "--switch-lag", "0")
    assert rebuilt.returncode == 0, rebuilt.stderr
    snapshot = await read_model_snapshot(await env.pool("order_history"))
    assert set(snapshot.orders) == set(range(101, 107))  # what the topics hold now
    await halted.stop()
    again = await env.start_consumer()
    await env.produce(encode([order_created(200, 3)]))
    await env.wait_caught_up()
    assert not again.halted
    assert 200 in (await read_model_snapshot(await env.pool("order_history"))).orders
