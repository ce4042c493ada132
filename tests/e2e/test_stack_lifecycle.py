"""`make up PROMETHEUS=1` / `make down` (python -m devstack up|down): all up, Prometheus scraping
every process, then nothing of ours left; and `make up KAFKA_BROKERS=3 PG_REPLICA=1` likewise."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import asyncpg
import pytest

from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD
from devstack.processes import free_port, pid_alive, port_is_free
from devstack.stack import REPO

SERVICE_PORTS = ("ORDER_PORT", "GOODS_PORT", "ORDER_HISTORY_PORT")


def free_ports(*names: str) -> dict[str, int]:
    """A free loopback port for each of the stack's port settings `names`."""
    return {name: free_port() for name in names}


def run_devstack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m devstack ARGS` with `env`, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


async def readers_on(port: int) -> int:
    """Sessions of the order-history API's read-only role on the server at `port`."""
    conn = await asyncpg.connect(f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres")
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = 'order_history_reader'"))
    finally:
        await conn.close()


def pids_of(status: dict[str, object]) -> list[int]:
    """Every PID `devstack status` names (Kafka's nodes under "pids")."""
    pids: list[int] = []
    for entry in status.values():
        if isinstance(entry, dict):
            pids += [entry["pid"]] if entry.get("pid") else []
            pids += entry.get("pids", [])
    return pids


@pytest.mark.slow
def test_up_twice_then_down_leaves_nothing_running() -> None:
    state_dir = REPO / ".devstack" / f"test-lifecycle-{free_port()}"
    ports = free_ports(
        "PG_PORT",
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        *SERVICE_PORTS,
        "ORDER_RELAY_METRICS_PORT",
        "GOODS_RELAY_METRICS_PORT",
        "ORDER_HISTORY_METRICS_PORT",
        "PROMETHEUS_PORT",
    )
    env = {**os.environ, "STACK_DIR": str(state_dir), "PROMETHEUS": "1", **{k: str(v) for k, v in ports.items()}}

    def devstack(*args: str) -> subprocess.CompletedProcess[str]:
        return run_devstack(env, *args)

    try:
        up = devstack("up")
        assert up.returncode == 0, up.stderr
        for name in ("ORDER_PORT", "GOODS_PORT", "ORDER_HISTORY_PORT"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5) as r:
                assert r.status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5) as r:
                assert r.status == 200
        again = devstack("up")  # safe to run twice
        assert again.returncode == 0, again.stderr
        pids = pids_of(json.loads(devstack("status").stdout))
        assert len(pids) == 9  # postgres, kafka, 3 APIs, 2 relays, 1 consumer, prometheus
        assert all(pid_alive(p) for p in pids)
        url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/targets"

        def scraped() -> set[tuple[str, str]]:
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.load(r)["data"]["activeTargets"]
            return {(t["labels"]["job"], t["labels"]["instance"].rsplit(":", 1)[1]) for t in targets}

        deadline = time.monotonic() + 60  # target discovery runs a moment after the server is ready
        while not scraped() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scraped() == {
            ("order-api", str(ports["ORDER_PORT"])),
            ("goods-api", str(ports["GOODS_PORT"])),
            ("order-history-api", str(ports["ORDER_HISTORY_PORT"])),
            ("order-relay", str(ports["ORDER_RELAY_METRICS_PORT"])),
            ("goods-relay", str(ports["GOODS_RELAY_METRICS_PORT"])),
            ("order-history-consumer", str(ports["ORDER_HISTORY_METRICS_PORT"])),
        }

        down = devstack("down")
        assert down.returncode == 0, down.stderr
        assert [p for p in pids if pid_alive(p)] == []
        after = json.loads(devstack("status").stdout)
        assert after["postgres"]["running"] is False and after["kafka"]["running"] is False
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_three_node_kafka_and_a_replica_up_then_down() -> None:
    """`make up KAFKA_BROKERS=3 PG_REPLICA=1`: three Kafka nodes and a hot standby that the
    order-history API reads; remembered by `status` and `down`; one node refused afterwards."""
    state_dir = REPO / ".devstack" / f"test-cluster-{free_port()}"
    # no metrics ports: this test is about the cluster
    ports = free_ports("PG_PORT", "PG_REPLICA_PORT", *SERVICE_PORTS) | dict.fromkeys(
        ("ORDER_RELAY_METRICS_PORT", "GOODS_RELAY_METRICS_PORT", "ORDER_HISTORY_METRICS_PORT"), 0
    )
    # Node i listens on KAFKA_PORT + 2i and KAFKA_CONTROLLER_PORT + 2i: six ports in a row, free now.
    base = next(p for p in range(20000, 60000, 8) if all(port_is_free(p + i) for i in range(6)))
    given = {"KAFKA_PORT": base, "KAFKA_CONTROLLER_PORT": base + 1, **ports}
    env = {**os.environ, "STACK_DIR": str(state_dir), **{k: str(v) for k, v in given.items()}}

    def devstack(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return run_devstack({**env, **more}, *args)

    try:
        up = devstack("up", KAFKA_BROKERS="3", PG_REPLICA="1")
        assert up.returncode == 0, up.stderr
        assert "3 nodes, replication factor 3, min.insync.replicas 2" in up.stdout
        status = json.loads(devstack("status").stdout)  # without the variables: remembered
        assert status["kafka"]["nodes"] == 3 and len(status["kafka"]["pids"]) == 3
        assert status["postgres-replica"]["running"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['ORDER_HISTORY_PORT']}/readyz", timeout=5) as r:
            assert r.status == 200
        assert asyncio.run(readers_on(ports["PG_REPLICA_PORT"])) > 0, "the API does not query the replica"
        pids = pids_of(status)
        assert len(pids) == 11  # postgres, its replica, 3 Kafka nodes, 3 APIs, 2 relays, 1 consumer
        down = devstack("down")
        assert down.returncode == 0, down.stderr
        assert [p for p in pids if pid_alive(p)] == []
        switched = devstack("up", KAFKA_BROKERS="1")
        assert switched.returncode == 1 and "make clean" in switched.stderr, switched.stderr
    finally:
        devstack("down")
        devstack("clean")
        shutil.rmtree(state_dir, ignore_errors=True)
