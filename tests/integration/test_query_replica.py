"""The order-history API reading a PostgreSQL streaming replica (ORDER_HISTORY_QUERY_DATABASE_URL).

The replica is a real hot standby of the session's server, made by devstack
with pg_basebackup (as `make up PG_REPLICA=1` does). The consumer writes to the
primary; the API queries the replica. A read with a Consistency-Token must wait
for the replica's own replay: with replay paused, a write that the primary's
read model already holds is still pending for the API, and the waiting read
answers as soon as replay resumes. Its answers' freshness is the replica's own:
a paused replay makes them staler (docs/freshness.md).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import asyncpg
import pytest

from devstack.databases import DATABASES
from devstack.postgres import PostgresServer
from devstack.processes import free_port
from devstack.stack import Stack
from order_history.api.consistency import ReadModelWatch
from shared.consistency import HEADER
from tests.harness import Env, wait_until
from tests.integration.test_freshness import staleness


@pytest.fixture(scope="module")
def replica(stack: Stack) -> Iterator[PostgresServer]:
    server = PostgresServer(
        data_dir=stack.config.state_dir / "pgdata-replica",
        port=free_port(),
        log_file=stack.logs / "postgres-replica.log",
        fast=True,
        primary=stack.postgres,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if server.relocated_to is not None:
            shutil.rmtree(server.relocated_to, ignore_errors=True)


def query_url(replica: PostgresServer) -> str:
    history = DATABASES[-1]
    return history.reader.url(history.name, replica.port)


async def replay(replica: PostgresServer, action: str) -> None:
    """pg_wal_replay_pause() or pg_wal_replay_resume() on the replica."""
    conn = await asyncpg.connect(replica.dsn())
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
        await conn.execute(f"SELECT pg_wal_replay_{action}()")
    finally:
        await conn.close()


async def test_tokens_wait_for_the_replicas_own_replay(env: Env, replica: PostgresServer) -> None:
    env.start_relay("order")
    env.start_relay("goods")
    await env.start_consumer()
    primary = await env.pool("order_history")
    async with (
        env.client("order") as order,
        env.client("goods") as goods,
        env.app_client("order_history", query_database_url=query_url(replica)) as (app, history),
    ):
        created = await order.post("/v1/order", json={"user_id": 3})
        order_id = created.json()["id"]
        seen = await history.get(f"/v1/order-history/{order_id}", headers={HEADER: created.headers[HEADER]})
        assert seen.status_code == 200 and seen.json()["goods_count"] == 0
        watch: ReadModelWatch = app.state.watch

        await replay(replica, "pause")
        try:
            added = await goods.post("/v1/goods", json={"order_id": order_id, "name": "x"})
            token = {HEADER: added.headers[HEADER]}

            async def on_primary() -> bool:
                count = await primary.fetchval("SELECT goods_count FROM orders WHERE id = $1", order_id)
                return bool(count == 1)

            await wait_until(on_primary, 30, "the consumer to apply the goods on the primary")
            stale = await history.get(f"/v1/order-history/{order_id}")
            assert stale.json()["goods_count"] == 0, "the API must read the replica, whose replay is paused"
            pending = await history.get(f"/v1/order-history/{order_id}", headers={**token, "Prefer": "wait=0.5"})
            assert pending.status_code == 412, pending.text

            waiting = history.get(f"/v1/order-history/{order_id}", headers={**token, "Prefer": "wait=30"})
            answer = asyncio.ensure_future(waiting)

            async def request_waits() -> bool:
                return bool(watch.waiters)

            await wait_until(request_waits, 30, "the read to wait on the watch")
            assert not answer.done()
        finally:
            await replay(replica, "resume")
        fresh = await answer
        assert fresh.status_code == 200 and fresh.json()["goods_count"] == 1
        assert watch.on_standby


async def test_the_replicas_answers_say_how_far_its_replay_is_behind(env: Env, replica: PostgresServer) -> None:
    """Freshness is read from the query database: a replica whose replay is paused answers staler and
    staler, while the primary stays current, and a bounded read of the replica is refused."""
    env.start_relay("order")
    await env.start_consumer()
    async with (
        env.client("order") as order,
        env.client("order_history") as on_primary,
        env.app_client("order_history", query_database_url=query_url(replica)) as (_, on_replica),
    ):
        created = await order.post("/v1/order", json={"user_id": 3})
        order_id = created.json()["id"]
        seen = await on_replica.get(
            f"/v1/order-history/{order_id}", headers={HEADER: created.headers[HEADER], "Prefer": "wait=10"}
        )
        assert seen.status_code == 200, seen.text

        async def fresh_on_the_replica() -> bool:
            response = await on_replica.get("/v1/order-history", headers={"Prefer": "max-staleness=3s, wait=10"})
            return response.status_code == 200

        await wait_until(fresh_on_the_replica, 60, "the replica to be current")
        await replay(replica, "pause")
        try:

            async def replica_behind() -> bool:
                late = staleness(await on_replica.get("/v1/order-history"))
                current = staleness(await on_primary.get("/v1/order-history"))
                return late is not None and current is not None and late > 4000 and current < late - 2000

            await wait_until(replica_behind, 60, "the paused replica to answer staler than the primary")
            refused = await on_replica.get("/v1/order-history", headers={"Prefer": "max-staleness=3s, wait=0"})
            assert refused.status_code == 503 and refused.json()["error"] == "too_stale"
        finally:
            await replay(replica, "resume")
        await wait_until(fresh_on_the_replica, 60, "the replica to be current again once it replays")
