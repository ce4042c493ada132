"""Chaos: every process kind killed with -9, the broker stopped, databases taken away, under a mixed HTTP load.

Each round makes every fault once, in turn: kill -9 of each API, each relay,
the consumer, PostgreSQL and Kafka (each restarted, as a supervisor would);
the broker stopped (SIGSTOP) for CHAOS_BROKER_STOP seconds; the read database
and a command database refusing connections (their sessions terminated) for a
few seconds. The faults are made by construction: each waits until the load
has made progress since the last one, and the next one starts only when the
killed process is back. CHAOS_ROUNDS=1 in `make test`; `make chaos` runs 3
(24 kill -9).

What clients may see: 2xx, 404 (the load names random ids), 503 with
Retry-After, or a connection error; anything else fails the test. At the end
every write the command databases hold is in the read model and nothing else
is (users, counts, goods' orders and names, versions), counts equal a recount,
and nothing was dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from devstack.processes import ManagedProcess
from devstack.startup import readyz
from tests.e2e.test_end_to_end import assert_read_model_matches_command_databases, wait_ready
from tests.harness import Env, wait_until

ROUNDS = int(os.environ.get("CHAOS_ROUNDS", "1"))
BROKER_STOP = float(os.environ.get("CHAOS_BROKER_STOP", "10"))
DATABASE_OUTAGE = 5.0
PROGRESS = 150  # accepted writes between two faults


@dataclass
class Load:
    """A mixed load over HTTP (writes of both services, reads of order-history), each answer classified."""

    order: httpx.AsyncClient
    goods: httpx.AsyncClient
    history: httpx.AsyncClient
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    accepted: int = 0
    max_order: int = 0
    max_goods: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self, rng: random.Random) -> tuple[str, httpx.Response]:
        roll = rng.random()
        if roll < 0.2 or self.max_order == 0:
            return "write", await self.order.post("/v1/order", json={"user_id": rng.randint(1, 50)})
        if roll < 0.5 or self.max_goods == 0:
            body = {"order_id": rng.randint(1, self.max_order + 2), "name": f"item-{rng.randint(1, 9)}"}
            return "write", await self.goods.post("/v1/goods", json=body)
        if roll < 0.6:
            body = {"order_id": rng.randint(1, self.max_order)}
            return "write", await self.goods.patch(f"/v1/goods/{rng.randint(1, self.max_goods)}", json=body)
        if roll < 0.65:
            return "write", await self.goods.patch(f"/v1/goods/{rng.randint(1, self.max_goods)}", json={"name": "r"})
        if roll < 0.7:
            return "write", await self.goods.delete(f"/v1/goods/{rng.randint(1, self.max_goods)}")
        if roll < 0.75:
            body = {"user_id": rng.randint(1, 50)}
            return "write", await self.order.patch(f"/v1/order/{rng.randint(1, self.max_order)}", json=body)
        if roll < 0.78:
            return "write", await self.order.delete(f"/v1/order/{rng.randint(1, self.max_order)}")
        if roll < 0.9:
            params = {"threshold": rng.randint(0, 3), "limit": 20, "offset": rng.randint(0, 40)}
            return "read", await self.history.get("/v1/order-history", params=params)
        return "read", await self.history.get(f"/v1/order-history/{rng.randint(1, self.max_order)}")

    def classify(self, kind: str, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            self.outcomes[f"{kind} {status}"] += 1
            if kind == "write":
                self.accepted += 1
                if status == 201:
                    created = response.json()["id"]
                    if "order_id" in response.json():
                        self.max_goods = max(self.max_goods, created)
                    else:
                        self.max_order = max(self.max_order, created)
        elif status == 404 or (status == 503 and response.headers.get("retry-after")):
            self.outcomes[f"{kind} {status}"] += 1
        else:
            self.unexpected.append(f"{response.request.method} {response.request.url.path}: {status} {response.text}")

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                kind, response = await self.request(rng)
            except httpx.TimeoutException as exc:
                self.unexpected.append(f"no answer within the client's timeout: {exc!r}")
                continue
            except httpx.TransportError:
                self.outcomes["connection error"] += 1
                await asyncio.sleep(0.05)  # the process is restarting
                continue
            self.classify(kind, response)

    async def progressed(self) -> None:
        mark = self.accepted

        async def more() -> bool:
            return self.accepted >= mark + PROGRESS

        await wait_until(more, 180, f"{PROGRESS} more accepted writes")


@dataclass
class Fault:
    name: str
    make: Callable[[], Awaitable[None]]
    kill9: bool = False


def all_alive(processes: dict[str, ManagedProcess], keep: Path) -> None:
    """No process may have died on its own: each must wait out what the faults did to it."""
    for name, proc in processes.items():
        if not proc.running():
            shutil.copy(proc.log_file, keep / f"{name}.log")
            lines = proc.log_file.read_text(errors="replace").splitlines()[-8:]
            tail = "\n".join(line[:300] + " ... " + line[-1200:] if len(line) > 1500 else line for line in lines)
            raise AssertionError(f"{name} exited on its own; its log ends:\n{tail}")


async def database_outage(env: Env, database: str) -> None:
    """The database refuses new sessions and loses its current ones, for DATABASE_OUTAGE seconds."""
    admin = await asyncpg.connect(env.stack.postgres.dsn())
    try:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        await asyncio.sleep(DATABASE_OUTAGE)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()


@contextlib.asynccontextmanager
async def durable_commits(env: Env) -> AsyncIterator[None]:
    """Commits survive a PostgreSQL crash while the test runs.

    The test cluster runs with synchronous_commit off (speed): a commit is
    acknowledged before its WAL leaves PostgreSQL's memory, so kill -9 of the
    server may lose an acknowledged commit that a relay already published.
    Production settings keep it on; so does this test, for the sessions it starts.
    """
    await alter_databases(env, "SET synchronous_commit = on")
    try:
        yield
    finally:
        await alter_databases(env, "RESET synchronous_commit")


async def alter_databases(env: Env, clause: str) -> None:
    admin = await asyncpg.connect(env.stack.postgres.dsn())
    try:
        for database in ("orders", "goods", "order_history"):
            await admin.execute(f'ALTER DATABASE "{database}" {clause}')
    finally:
        await admin.close()


@pytest.mark.slow
async def test_chaos_loses_nothing_and_clients_see_only_clean_answers(env: Env, tmp_path: Path) -> None:
    async with durable_commits(env):
        await chaos(env, tmp_path)


async def start_every_process(env: Env) -> dict[str, ManagedProcess]:
    """The three APIs, both relays and the consumer as real processes, ready."""
    processes = {
        "order-api": env.process("order-api", "order", "api"),
        "goods-api": env.process("goods-api", "goods", "api"),
        "history-api": env.process("history-api", "order_history", "api"),
        "order-relay": env.process("order-relay", "order", "relay"),
        "goods-relay": env.process("goods-relay", "goods", "relay"),
        "consumer": env.process("consumer", "order_history", "consumer"),
    }
    for proc in processes.values():
        proc.start()
    await wait_ready(env)
    return processes


@contextlib.asynccontextmanager
async def running_load(env: Env, workers: int = 12) -> AsyncIterator[Load]:
    """`workers` clients of the processes' APIs writing and reading without pause, until the block ends."""
    config = env.stack.config
    timeout = httpx.Timeout(30.0)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.order_port}", timeout=timeout) as order,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.goods_port}", timeout=timeout) as goods,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.history_port}", timeout=timeout) as history,
    ):
        load = Load(order, goods, history)
        tasks = [asyncio.create_task(load.worker(seed)) for seed in range(workers)]
        try:
            yield load
        finally:
            load.stop.set()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks)


async def chaos(env: Env, tmp_path: Path) -> None:
    processes = await start_every_process(env)
    config = env.stack.config
    ports = {"order-api": config.order_port, "goods-api": config.goods_port, "history-api": config.history_port}

    async def back(name: str) -> None:
        if name in ports:

            async def ready() -> bool:
                return await asyncio.to_thread(readyz, ports[name]) == 200

            await wait_until(ready, 60, f"{name} to be ready again")

    def kill(name: str) -> Callable[[], Awaitable[None]]:
        async def make() -> None:
            processes[name].kill9()
            processes[name].start()
            await back(name)

        return make

    async def kill_postgres() -> None:
        await asyncio.to_thread(env.stack.postgres.kill9)
        await asyncio.to_thread(env.stack.postgres.start)
        await env.close_pools()  # the test's own sessions died with the server

    async def kill_kafka() -> None:
        await asyncio.to_thread(env.kafka.kill9)
        await asyncio.to_thread(env.kafka.start, 120.0, ())

    async def stop_broker() -> None:
        env.kafka.pause()
        try:
            await asyncio.sleep(BROKER_STOP)
        finally:
            env.kafka.resume()

    async def read_database_outage() -> None:
        await database_outage(env, "order_history")
        await env.close_pools()

    async def command_database_outage() -> None:
        await database_outage(env, "goods")
        await env.close_pools()

    faults = [Fault(f"kill -9 {name}", kill(name), kill9=True) for name in processes]
    faults += [
        Fault("kill -9 PostgreSQL", kill_postgres, kill9=True),
        Fault("kill -9 Kafka", kill_kafka, kill9=True),
        Fault(f"broker stopped {BROKER_STOP:.0f} s", stop_broker),
        Fault("read database refuses sessions", read_database_outage),
        Fault("command database refuses sessions", command_database_outage),
    ]
    made: Counter[str] = Counter()
    async with running_load(env) as load:
        for _ in range(ROUNDS):
            for fault in faults:
                await load.progressed()
                all_alive(processes, tmp_path)
                await fault.make()
                made[fault.name] += 1
        await load.progressed()
        all_alive(processes, tmp_path)
    kills = sum(n for f in faults if f.kill9 for n in [made[f.name]])
    print(f"faults made: {dict(made)}; kill -9: {kills}; answers: {dict(load.outcomes)}")
    assert kills == ROUNDS * 8
    for name, proc in processes.items():  # kept by pytest for a look after a failure
        shutil.copy(proc.log_file, tmp_path / f"{name}.log")
    assert not load.unexpected, "\n".join(load.unexpected[:10]) + f"\nlogs in {tmp_path}"

    await env.close_pools()
    await assert_read_model_matches_command_databases(env)
    await assert_versions_match(env)
    history_pool = await env.pool("order_history")
    assert await history_pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def assert_versions_match(env: Env) -> None:
    """Every live entity is at the same version in the read model as in its command database."""
    for service, table in (("order", "orders"), ("goods", "goods")):
        command = {
            r["id"]: r["version"] for r in await (await env.pool(service)).fetch(f"SELECT id, version FROM {table}")
        }
        live = "known AND NOT deleted" if table == "orders" else "NOT deleted"
        read = {
            r["id"]: r["version"]
            for r in await (await env.pool("order_history")).fetch(f"SELECT id, version FROM {table} WHERE {live}")
        }
        assert read == command, f"{table}: versions differ"
