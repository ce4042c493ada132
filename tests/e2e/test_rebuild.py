"""`order-history rebuild`: a new read model built beside the serving one and swapped in, under load.

The APIs, relays and the serving consumer are real processes; the rebuild runs
in-process so that the test can make writes arrive during it by construction
(it waits for them between the rebuild's steps), then as the console command.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from order_history.ops.rebuild import Rebuild
from shared import consistency
from tests.e2e.test_end_to_end import assert_read_model_matches_command_databases, start_services, wait_ready
from tests.harness import ORDER, Env, command, wait_until
from tests.readmodel import encode, order_created
from tests.workload import Workload


async def _read_forever(client: httpx.AsyncClient, statuses: Counter[int], stop: asyncio.Event) -> None:
    """List and detail GETs back to back; every answer's status is counted."""
    n = 0
    while not stop.is_set():
        n += 1
        listed = await client.get("/v1/order-history", params={"threshold": 0, "limit": 20, "offset": n % 50})
        statuses[listed.status_code] += 1
        detail = await client.get(f"/v1/order-history/{1 + n % 200}")
        statuses[200 if detail.status_code == 404 else detail.status_code] += 1  # 404: an id not there


async def _schemas(env: Env) -> list[str]:
    rows = await (await env.pool("order_history")).fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'read_model%' ORDER BY 1"
    )
    return [r["nspname"] for r in rows]


async def _reflected_tokens(env: Env) -> list[str]:
    """Tokens of the newest versions the serving model holds: 15 orders and 15 goods."""
    pool = await env.pool("order_history")
    tokens = []
    for entity, table in (("order", "orders"), ("goods", "goods")):
        rows = await pool.fetch(f"SELECT id, version FROM {table} WHERE version > 0 ORDER BY version DESC, id LIMIT 15")
        tokens += [consistency.token(entity, r["id"], r["version"]) for r in rows]
    assert len(tokens) == 30
    return tokens


async def test_rebuild_under_load_loses_nothing_and_fails_no_read(env: Env) -> None:
    start_services(env)
    serving = env.process("consumer", "order_history", "consumer")
    serving.start()
    await wait_ready(env)
    workload = Workload(await env.pool("order"), await env.pool("goods"))
    await workload.run(accepted=1500, seed=3)
    await assert_read_model_matches_command_databases(env)

    done = asyncio.Event()
    writes = asyncio.create_task(workload.run(accepted=0, seed=4, concurrency=4, until=done.is_set))
    statuses: Counter[int] = Counter()
    async with env.http("order_history") as client:
        reads = asyncio.create_task(_read_forever(client, statuses, done))

        async def more_writes(n: int) -> None:
            mark = workload.stats.accepted

            async def reached() -> bool:
                return workload.stats.accepted >= mark + n

            await wait_until(reached, 120, f"{n} more writes")

        settings = env.history_settings().model_copy(
            update={"kafka_topic_prefix": env.prefix, "consumer_group": env.group}
        )
        rebuild = Rebuild(settings)
        await rebuild.prepare()
        await more_writes(300)  # while the new model is being built
        await rebuild.catch_up(switch_lag=100)

        async def reads_over(n: int) -> None:
            async def answered() -> bool:
                return sum(statuses.values()) > n

            await wait_until(answered, 60, f"more than {n} reads")

        await reads_over(0)
        reads_before = sum(statuses.values())
        reflected = await _reflected_tokens(env)
        await rebuild.switch()  # under the write and read load
        # what the old model reflected, the new one does at once: its positions are the old ones or later
        response = await client.get(
            "/v1/order-history",
            headers={consistency.HEADER: ", ".join(reflected), "Prefer": "wait=0"},
        )
        assert response.status_code == 200, response.text
        await rebuild.drop_old()
        await more_writes(300)  # applied by the serving consumer to the new model
        await reads_over(reads_before)
        done.set()
        await writes
        await reads
    assert serving.running(), "the serving consumer died in the switch"
    assert set(statuses) == {200}, statuses
    assert reads_before > 0 and sum(statuses.values()) > reads_before
    assert await _schemas(env) == []
    await assert_read_model_matches_command_databases(env)


async def test_rebuild_command_and_its_refusal_when_retention_deleted_events(env: Env) -> None:
    await env.start_consumer()
    await env.produce(encode([order_created(i, 1) for i in range(1, 31)]))
    await env.wait_caught_up()
    result = await command(env, "order_history", "rebuild", "--switch-lag", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rebuilt the read model from 30 event(s)"), result.stdout
    assert "the old read model dropped" in result.stdout
    assert await (await env.pool("order_history")).fetchval("SELECT count(*) FROM orders WHERE known") == 30
    assert await _schemas(env) == []

    ends = await env.end_offsets((ORDER,))
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    try:  # retention: the first message of each partition is deleted
        await admin.delete_records({TopicPartition(t, p): RecordsToDelete(1) for (t, p), end in ends.items() if end})
    finally:
        await admin.close()
    refused = await command(env, "order_history", "rebuild")
    assert refused.returncode == 1
    assert "retention deleted events" in refused.stderr and "nothing was changed" in refused.stderr
    assert await _schemas(env) == []
    assert await (await env.pool("order_history")).fetchval("SELECT count(*) FROM orders WHERE known") == 30


async def test_a_serving_transaction_waiting_at_the_switch_is_applied_to_the_new_model(env: Env) -> None:
    """The switch's hardest moment, made on purpose: the serving consumer has events in a
    transaction that waits for the position rows the switch holds, and the rebuild has
    not seen them. That transaction must apply nothing to the old tables, and the
    consumer must apply those events to the new ones."""
    serving = await env.start_consumer()
    await env.produce(encode([order_created(i, 1) for i in range(1, 21)]))
    await env.wait_caught_up()
    settings = env.history_settings().model_copy(update={"kafka_topic_prefix": env.prefix, "consumer_group": env.group})
    rebuild = Rebuild(settings)
    await rebuild.prepare()
    await rebuild.catch_up(switch_lag=0)
    rebuilt = rebuild.consumer
    assert rebuilt is not None and rebuilt.consumer is not None
    rebuilt.consumer.pause(*rebuilt.consumer.assignment())  # it will not see what comes next
    history = await env.pool("order_history")

    async def serving_transaction_waits() -> None:
        await env.produce(encode([order_created(i, 2) for i in range(21, 31)]))

        async def waiting() -> bool:
            found = await history.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'order-history-consumer' AND wait_event_type = 'Lock'"""
            )
            return bool(found)

        await wait_until(waiting, 30, "the serving consumer to wait for its position rows")

    await rebuild.switch(after_lock=serving_transaction_waits)
    await rebuild.drop_old()
    await env.wait_caught_up()
    rows = await history.fetch("SELECT id, user_id FROM orders WHERE known AND NOT deleted")
    users = {r["id"]: r["user_id"] for r in rows}
    assert users == {i: 1 if i <= 20 else 2 for i in range(1, 31)}
    assert not serving.halted
