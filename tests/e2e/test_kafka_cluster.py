"""A three-node KRaft cluster: brokers killed with -9 and restarted one by one under a mixed HTTP load.

The cluster is the one `make up KAFKA_BROKERS=3` runs (devstack), on free
loopback ports, beside the session's PostgreSQL. Topics have replication factor
3 and min.insync.replicas 2, so with any one node down the relays' writes
(acks=all) still complete. The faults, each made by construction:

1. kill -9 of the leader of a partition of order.events; Kafka must take
   KAFKA_PROGRESS more events while that node is down; then it comes back and
   every partition's replicas are in sync again;
2. the same with a different node (after the first returned);
3. a rolling restart: each node in turn stopped (SIGTERM), events taken
   meanwhile, started, in sync again.

CLUSTER_FAULTS is how many of these five node outages run, in this order:
`make test` runs the first (a leader killed under load), `make chaos` all five.

The processes (APIs, relays, consumer) are never restarted. At the end the read
model is exactly what the command databases say, with the same versions, and
no client saw an answer other than 2xx, 404 or 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.kafka_node import KafkaNode
from devstack.processes import free_port
from devstack.stack import Stack
from shared.events import ORDER_TOPIC, TOPICS
from tests.e2e.test_chaos import Load, all_alive, assert_versions_match, running_load, start_every_process
from tests.e2e.test_end_to_end import assert_read_model_matches_command_databases
from tests.harness import Env, fresh_env, wait_until

KAFKA_PROGRESS = 100  # events Kafka must acknowledge while a node is down
FAULTS = ("kill -9 a node",) * 2 + ("node stopped and started",) * 3
FAULTS_RUN = int(os.environ.get("CLUSTER_FAULTS", "1"))


@pytest.fixture(scope="module")
def cluster_stack(stack: Stack) -> Iterator[Stack]:
    """The session's PostgreSQL with a three-node Kafka cluster of its own."""
    config = dataclasses.replace(
        stack.config,
        state_dir=stack.config.state_dir / "cluster",
        kafka_brokers=3,
        kafka_node_ports=tuple((free_port(), free_port()) for _ in range(3)),
        kafka_sasl_ports=(),
    )
    cluster = Stack(config)
    cluster.postgres = stack.postgres
    try:
        cluster.kafka.start(topics=())
        yield cluster
    finally:
        cluster.kafka.stop()


@pytest.fixture
async def cluster_env(cluster_stack: Stack) -> AsyncIterator[Env]:
    async with fresh_env(cluster_stack) as env:
        yield env


async def topic_settings(env: Env) -> dict[str, tuple[int, str]]:
    """Per event topic of this test: (replicas of its first partition, min.insync.replicas)."""
    names = [env.topic(t) for t in TOPICS]
    partitions: dict[tuple[str, int], dict[str, Any]] = {}

    async def described() -> bool:  # the node that answers may learn of new topics a moment later
        partitions.update(await env.kafka.describe(names))
        return all((n, 0) in partitions for n in names)

    await wait_until(described, 60, "the test's topics in the cluster's metadata")
    admin = AIOKafkaAdminClient(bootstrap_servers=env.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    min_isr = {
        resource[3]: value
        for response in responses
        for resource in response.resources
        for name, value, *_ in resource[4]
        if name == "min.insync.replicas"
    }
    return {n: (len(partitions[(n, 0)]["replicas"]), min_isr[n]) for n in names}


async def wait_in_sync(env: Env) -> None:
    """Until every partition of the test's topics has all three replicas in sync."""
    names = [env.topic(t) for t in TOPICS]

    async def in_sync() -> bool:
        with contextlib.suppress(Exception):  # a node may still be starting
            described = await env.kafka.describe(names)
            return bool(described) and all(len(p["isr"]) == 3 for p in described.values())
        return False

    await wait_until(in_sync, 120, "every partition's three replicas to be in sync")


async def events_in_kafka(env: Env) -> int:
    return sum((await env.end_offsets()).values())


async def kafka_progressed(env: Env, load: Load) -> None:
    """Until Kafka acknowledged KAFKA_PROGRESS more events, and clients had more writes accepted."""
    mark = await events_in_kafka(env)

    async def more() -> bool:
        with contextlib.suppress(Exception):
            return await events_in_kafka(env) >= mark + KAFKA_PROGRESS
        return False

    await wait_until(more, 180, f"Kafka to take {KAFKA_PROGRESS} more events")
    await load.progressed()


async def leader_of(env: Env, topic: str, partition: int) -> KafkaNode:
    leader = -1

    async def elected() -> bool:
        nonlocal leader
        described = await env.kafka.describe([env.topic(topic)])
        leader = described.get((env.topic(topic), partition), {}).get("leader", -1)
        return bool(leader >= 0)

    await wait_until(elected, 60, f"a leader of {topic}[{partition}]")
    return env.kafka.node(leader)


@pytest.mark.slow
async def test_a_three_node_cluster_loses_no_accepted_write_when_nodes_die_or_restart(
    cluster_env: Env, tmp_path: Path
) -> None:
    env = cluster_env
    assert 1 <= FAULTS_RUN <= len(FAULTS), f"CLUSTER_FAULTS is 1 to {len(FAULTS)}"
    assert set((await topic_settings(env)).values()) == {(3, "2")}
    processes = await start_every_process(env)
    made: Counter[str] = Counter()
    killed: list[int] = []
    async with running_load(env) as load:
        await kafka_progressed(env, load)
        for fault in FAULTS[:FAULTS_RUN]:
            if fault == "kill -9 a node":  # a partition's leader; the second time another node
                node = await leader_of(env, ORDER_TOPIC, 0)
                if node.node_id in killed:
                    node = next(n for n in env.kafka.nodes if n.node_id not in killed)
                await asyncio.to_thread(node.kill9)
                killed.append(node.node_id)
            else:  # a rolling restart: each node in turn
                node = env.kafka.nodes[made[fault]]
                await asyncio.to_thread(node.stop)
            made[fault] += 1
            await kafka_progressed(env, load)
            all_alive(processes, tmp_path)
            await asyncio.to_thread(env.kafka.start_node, node)
            await wait_in_sync(env)
        await kafka_progressed(env, load)
        all_alive(processes, tmp_path)
    print(f"faults made: {dict(made)}; nodes killed: {killed}; answers: {dict(load.outcomes)}")
    assert made == Counter(FAULTS[:FAULTS_RUN]) and len(set(killed)) == len(killed) == made["kill -9 a node"]
    for name, proc in processes.items():  # kept by pytest for a look after a failure
        shutil.copy(proc.log_file, tmp_path / f"{name}.log")
    assert not load.unexpected, "\n".join(load.unexpected[:10]) + f"\nlogs in {tmp_path}"

    await assert_read_model_matches_command_databases(env)
    await assert_versions_match(env)
    history_pool = await env.pool("order_history")
    assert await history_pool.fetchval("SELECT count(*) FROM dead_letters") == 0
