"""The outbox relay under faults: Kafka down, relay killed. Nothing accepted is lost."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import REGISTRY

from devstack.processes import ManagedProcess
from order import service as order_service
from tests.harness import ORDER, Env, wait_until


def check_stream(records: list[ConsumerRecord], outbox_ids: set[str]) -> None:
    """Every outbox event is on the topic; a duplicate keeps its event_id and payload;
    per aggregate, versions appear in order within the partition."""
    by_id: dict[str, bytes] = {}
    for m in records:
        event = json.loads(m.value)
        assert by_id.setdefault(event["event_id"], m.value) == m.value
        assert m.key == str(event["aggregate_id"]).encode()
    assert set(by_id) == outbox_ids
    per_aggregate: dict[int, list[int]] = defaultdict(list)
    versions_seen: dict[tuple[int, int], str] = {}
    for m in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = json.loads(m.value)
        key = (event["aggregate_id"], event["aggregate_version"])
        # never two different events for one (aggregate, version)
        assert versions_seen.setdefault(key, event["event_id"]) == event["event_id"]
        per_aggregate[event["aggregate_id"]].append(event["aggregate_version"])
    for versions in per_aggregate.values():
        distinct = [v for i, v in enumerate(versions) if v not in versions[:i]]
        assert distinct == sorted(distinct)  # first appearances are in version order


async def outbox_event_ids(env: Env, service: str = "order") -> set[str]:
    """Every event written to the outbox since the test's `journal_outbox`."""
    pool = await env.pool(service)
    return {str(r["event_id"]) for r in await pool.fetch("SELECT event_id FROM outbox_journal")}


@pytest.fixture(autouse=True)
async def _journal(env: Env) -> None:
    await env.journal_outbox("order")


@pytest.mark.slow
async def test_writes_accepted_while_kafka_is_down_all_arrive_in_order(env: Env) -> None:
    env.start_relay("order", relay_max_backoff=1.0, kafka_request_timeout_ms=3000, relay_delivery_timeout=3.0)
    async with env.client("order") as client:
        created = await client.post("/v1/order", json={"user_id": 1})
        assert created.status_code == 201
        await env.wait_outbox_drained()

        env.kafka.stop()
        try:
            ids: list[int] = []
            for i in range(500):
                if i % 5 == 0 or not ids:
                    r = await client.post("/v1/order", json={"user_id": i + 1})
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["id"])
                else:
                    r = await client.patch(f"/v1/order/{ids[-1]}", json={"user_id": i + 1})
                    assert r.status_code == 200, r.text
            pool = await env.pool("order")
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 500
        finally:
            await asyncio.to_thread(env.kafka.start)
    await env.wait_outbox_drained(timeout=120)
    records = await env.read_topic(ORDER, expect=501, timeout=60)
    check_stream(records, await outbox_event_ids(env))


@pytest.mark.slow
async def test_relay_killed_in_the_middle_of_a_backlog_loses_nothing(env: Env) -> None:
    """The relay is killed after Kafka acknowledged a batch and before the batch was deleted
    from the outbox: the crash the outbox must survive (the batch goes out again, nothing is lost).

    A row in the middle of the backlog is held locked, so the relay's delete of the batch that
    holds it waits; it is killed exactly there, whatever the machine's speed.
    """
    pool = await env.pool("order")
    creator = order_service.order_creator(pool)
    sem = asyncio.Semaphore(8)

    async def create(i: int) -> None:
        async with sem:
            order = await order_service.create_order(creator, i + 1)
            await order_service.update_order(pool, order.id, i + 2, None)

    await asyncio.gather(*(create(i) for i in range(1500)))  # a backlog of 3000 events
    relay = env.process("order-relay", "order", "relay")
    relay.env = {**(relay.env or {}), "ORDER_RELAY_BATCH_SIZE": "50"}
    async with pool.acquire() as holder, holder.transaction():
        await holder.fetchval("SELECT id FROM outbox ORDER BY id OFFSET 1000 LIMIT 1 FOR UPDATE")
        relay.start()

        async def delete_waits() -> bool:
            return bool(
                await pool.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'
                         AND query LIKE 'DELETE FROM outbox%'"""
                )
            )

        await wait_until(delete_waits, 60, "the relay to wait for the locked row")
        relay.kill9()
    published = 3000 - await pool.fetchval("SELECT count(*) FROM outbox")
    assert published <= 1000  # at most the batches before the locked row's
    relay.start()
    await env.wait_outbox_drained(timeout=120)
    records = await env.read_topic(ORDER, expect=3000, timeout=60)
    check_stream(records, await outbox_event_ids(env))
    assert len(records) > 3000, "the batch sent before the kill was not sent again"


async def test_two_relays_do_not_publish_the_same_rows(env: Env) -> None:
    """With two relays on one database, each row goes out once (no crash, so no duplicate)."""
    env.start_relay("order", relay_batch_size=20)
    env.start_relay("order", relay_batch_size=20)
    creator = order_service.order_creator(await env.pool("order"))
    for i in range(300):
        await order_service.create_order(creator, i + 1)
    await env.wait_outbox_drained()
    records = await env.read_topic(ORDER, expect=300)
    await asyncio.sleep(1.0)
    records = await env.read_topic(ORDER)
    assert len(records) == 300
    check_stream(records, await outbox_event_ids(env))


async def test_published_rows_leave_the_outbox_and_the_rest_stay(env: Env) -> None:
    """The outbox holds only what Kafka has not acknowledged: 20 rows published are deleted;
    then, with the broker frozen, 5 more stay until it answers again."""
    env.start_relay("order", relay_delivery_timeout=2.0, relay_max_backoff=0.5, relay_poll_interval=0.2)
    pool = await env.pool("order")
    creator = order_service.order_creator(pool)
    for i in range(20):
        await order_service.create_order(creator, i + 1)
    await env.wait_outbox_drained()
    assert len(await env.read_topic(ORDER, expect=20)) == 20
    assert await pool.fetchval("SELECT count(*) FROM outbox_journal") == 20
    errors_before = _publish_errors()
    env.kafka.pause()
    try:
        for i in range(5):
            await order_service.create_order(creator, 100 + i)

        async def given_up() -> bool:
            return _publish_errors() > errors_before

        await wait_until(given_up, 60, "the relay to give a batch up while the broker is frozen")
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 5
    finally:
        env.kafka.resume()
    await env.wait_outbox_drained()
    records = await env.read_topic(ORDER, expect=25, timeout=60)
    check_stream(records, await outbox_event_ids(env))


def _publish_errors() -> float:
    """The in-process order relay's failed cycles so far (relay_publish_errors_total)."""
    return REGISTRY.get_sample_value("relay_publish_errors_total", {"relay": "order"}) or 0.0


async def _backlog(env: Env, orders: int) -> None:
    pool = await env.pool("order")
    creator = order_service.order_creator(pool)
    sem = asyncio.Semaphore(8)

    async def create(i: int) -> None:
        async with sem:
            await order_service.create_order(creator, i + 1)

    await asyncio.gather(*(create(i) for i in range(orders)))


async def _restart_postgres(env: Env) -> None:
    await env.close_pools()
    env.stack.postgres.kill9()
    await asyncio.to_thread(env.stack.postgres.start)


@pytest.mark.slow
async def test_relay_publishing_when_postgres_crashes_goes_on_after_it_restarts(env: Env) -> None:
    """PostgreSQL is killed (-9) while the relay is in the middle of a batch, and started again:
    the relay publishes the rest of the backlog and every write made after the restart."""
    await _backlog(env, 2000)
    pool = await env.pool("order")
    relay = env.process("order-relay", "order", "relay")
    relay.env = {**(relay.env or {}), "ORDER_RELAY_BATCH_SIZE": "100"}
    holder = await pool.acquire()
    await holder.execute("BEGIN")
    await holder.fetchval("SELECT id FROM outbox ORDER BY id OFFSET 1000 LIMIT 1 FOR UPDATE")
    relay.start()

    async def delete_waits() -> bool:
        return bool(
            await pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'
                     AND query LIKE 'DELETE FROM outbox%'"""
            )
        )

    await wait_until(delete_waits, 60, "the relay to be in the middle of a batch")
    await _restart_postgres(env)
    await _backlog(env, 10)  # written after the restart
    await env.wait_outbox_drained(timeout=120)
    records = await env.read_topic(ORDER, expect=2010, timeout=60)
    check_stream(records, await outbox_event_ids(env))
    assert relay.running()


def _relay_process(env: Env, name: str, **settings: str) -> ManagedProcess:
    relay = env.process(name, "order", "relay")
    relay.env = {**(relay.env or {}), **{f"ORDER_RELAY_{k.upper()}": v for k, v in settings.items()}}
    return relay


async def _logged(process: ManagedProcess, message: str, times: int = 1, timeout: float = 60) -> None:
    async def seen() -> bool:
        try:
            return process.log_file.read_text(errors="replace").count(message) >= times
        except FileNotFoundError:
            return False

    await wait_until(seen, timeout, f"{process.name} to log {message!r}")


@pytest.mark.slow
async def test_a_broker_that_stops_answering_mid_batch_holds_no_transaction_and_a_standby_takes_over(env: Env) -> None:
    """The broker is frozen (SIGSTOP) while the leading relay sends a batch: the leader gives the
    batch up within its delivery timeout, no relay ever sits in an open transaction, the standby
    takes the lead, SIGTERM stops a relay at once, and after SIGCONT every row is published."""
    settings = {"delivery_timeout": "2", "leader_lease": "10", "poll_interval": "0.2", "max_backoff": "1"}
    first = _relay_process(env, "order-relay-a", **settings)
    second = _relay_process(env, "order-relay-b", **settings)
    first.start()
    await _logged(first, "leading")
    await _backlog(env, 1)
    await env.wait_outbox_drained()  # the leader has a working connection to the broker
    second.start()
    await _logged(second, "standing by")
    pool = await env.pool("order")
    open_transactions = 0
    env.kafka.pause()
    try:
        await _backlog(env, 300)  # read and sent by the leader: no acknowledgement comes

        async def standby_leads() -> bool:
            nonlocal open_transactions
            open_transactions += await pool.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE application_name LIKE 'outbox-relay-%' AND state LIKE 'idle in transaction%'"""
            )
            return "leading" in second.log_file.read_text(errors="replace")

        await wait_until(standby_leads, 60, "the standby to take the lead")
        assert "batch given up" in first.log_file.read_text(errors="replace")
        assert open_transactions == 0
        assert first.stop(timeout=15), "the relay did not stop on SIGTERM while Kafka was not answering"
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 300
    finally:
        env.kafka.resume()
    await env.wait_outbox_drained(timeout=120)
    records = await env.read_topic(ORDER, expect=301, timeout=60)
    check_stream(records, await outbox_event_ids(env))
