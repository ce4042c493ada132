"""`make up PROMETHEUS=1` / `make down` (python -m devstack up|down): all up, Prometheus scraping
every process, then nothing of ours left; and `make up KAFKA_BROKERS=3 PG_REPLICA=1` likewise.
`make up` fails, naming it, on a process that exits after it was started or a consumer that never
takes its partitions, and `make status` says which process is not running."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import sessions
from devstack.config import StackConfig
from devstack.paths import REPO
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD
from devstack.processes import free_port, pid_alive, port_is_free
from devstack.stack import Stack

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


# Every partition of the event topics at the stack's default KAFKA_PARTITIONS.
EVENT_PARTITIONS = {(topic, partition) for topic in ("order.events", "goods.events") for partition in range(3)}
CONSUMER = "order_history-consumer-0"


def positioned(metrics_port: int) -> tuple[set[tuple[str, int]], float]:
    """The partitions the consumer serving /metrics on `metrics_port` holds at their stored positions
    (those with a `consumer_lag_events` sample), and its `consumer_halted`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    held: set[tuple[str, int]] = set()
    halted = -1.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "consumer_lag_events":
                held.add((sample.labels["topic"], int(sample.labels["partition"])))
            elif sample.name == "consumer_halted":
                halted = sample.value
    return held, halted


def status_lines(result: subprocess.CompletedProcess[str]) -> tuple[dict[str, str], str]:
    """`devstack status`: its line per process, by the process's name (the first word), and its last line."""
    lines = result.stdout.strip().splitlines()
    return {line.split()[0]: line for line in lines[:-1]}, lines[-1]


def runs(line: str) -> bool:
    """A line of `devstack status` says "running" (not "not running (...)")."""
    return line.split()[1] == "running"


def stop_process(env: dict[str, str], name: str) -> None:
    """Stop one process of the stack in `env` as `make down` would (SIGTERM, by its PID file)."""
    (process,) = [p for p in Stack(StackConfig.from_env(env)).processes() if p.name == name]
    process.stop()


@contextmanager
def port_taken(port: int) -> Iterator[None]:
    """Another program listening on `port` meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def stack_env(name: str, **more: str) -> tuple[dict[str, str], dict[str, int], Path]:
    """The environment of a stack of its own in .devstack/test-NAME-PORT on free ports, with `more`."""
    state_dir = sessions.claim(sessions.SESSIONS / f"test-{name}-{free_port()}")
    ports = free_ports(
        "PG_PORT",
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        *SERVICE_PORTS,
        "ORDER_RELAY_METRICS_PORT",
        "GOODS_RELAY_METRICS_PORT",
        "ORDER_HISTORY_METRICS_PORT",
    )
    env = {**os.environ, "STACK_DIR": str(state_dir), **{k: str(v) for k, v in ports.items()}, **more}
    return env, ports, state_dir


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
    state_dir = sessions.claim(sessions.SESSIONS / f"test-lifecycle-{free_port()}")
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
        # Returned only once the consumer holds every partition at its stored position.
        assert positioned(ports["ORDER_HISTORY_METRICS_PORT"]) == (EVENT_PARTITIONS, 0.0)
        for name in ("ORDER_PORT", "GOODS_PORT", "ORDER_HISTORY_PORT"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5) as r:
                assert r.status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5) as r:
                assert r.status == 200
        again = devstack("up")  # safe to run twice
        assert again.returncode == 0, again.stderr
        status = devstack("status")
        assert status.returncode == 0, status.stdout
        lines, last = status_lines(status)
        assert len(lines) == 9 and all(runs(line) for line in lines.values()), status.stdout
        assert {"postgres", "kafka", "prometheus", CONSUMER} <= set(lines) and last == "all 9 running"
        pids = pids_of(json.loads(devstack("status", "--json").stdout))
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
        stopped = devstack("status")
        assert stopped.returncode == 3, stopped.stdout
        lines, last = status_lines(stopped)
        assert "not running (stopped)" in lines[CONSUMER] and last == "the stack is stopped; `make up` starts it"
        after = json.loads(devstack("status", "--json").stdout)
        assert after["postgres"]["running"] is False and after["kafka"]["running"] is False
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_process_that_exits_after_start_fails_up_and_shows_in_status() -> None:
    """The consumer dies right after `make up` starts it (another program took its metrics port
    meanwhile), while the APIs it waits for are ready already: `up` says so, with the consumer's
    log, and exits 1; `status` shows it as exited and exits 1; once the port is free, all is well."""
    env, ports, state_dir = stack_env("exits")

    def devstack(*args: str) -> subprocess.CompletedProcess[str]:
        return run_devstack(env, *args)

    try:
        up = devstack("up")
        assert up.returncode == 0, up.stderr
        stop_process(env, CONSUMER)
        with port_taken(ports["ORDER_HISTORY_METRICS_PORT"]):
            failed = devstack("up")
            assert failed.returncode == 1, failed.stderr
            assert f"error: {CONSUMER} exited with status 1 after it was started" in failed.stderr, failed.stderr
            log = (state_dir / "logs" / f"{CONSUMER}.log").relative_to(REPO)
            assert f"last lines of {log}:" in failed.stderr, failed.stderr
            assert "Address already in use" in failed.stderr, failed.stderr  # the log's own words
            assert "stack is up" not in failed.stdout

            status = devstack("status")
            assert status.returncode == 1, status.stdout
            lines, last = status_lines(status)
            assert "not running (exited)" in lines[CONSUMER], status.stdout
            others = [line for name, line in lines.items() if name != CONSUMER]
            assert len(others) == 7 and all(runs(line) for line in others), status.stdout
            assert last == (
                f"not running: {CONSUMER} (exited). The log of a process that exited says why; "
                "`make up` starts what is not running."
            )
            entry = json.loads(devstack("status", "--json").stdout)[CONSUMER]
            assert entry["state"] == "not running (exited)" and entry["pid"] is None

        up = devstack("up")
        assert up.returncode == 0, up.stderr
        assert positioned(ports["ORDER_HISTORY_METRICS_PORT"]) == (EVENT_PARTITIONS, 0.0)
        assert devstack("status").returncode == 0
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_consumer_that_never_takes_its_partitions_fails_up() -> None:
    """A session timeout above the broker's group.max.session.timeout.ms: the consumer runs, but
    the group refuses it, so it never gets a partition. `up` fails naming it once READY_TIMEOUT
    has passed (however long joining takes on this machine, it never succeeds)."""
    env, _, state_dir = stack_env("unassigned")

    def devstack(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return run_devstack({**env, **more}, *args)

    try:
        failed = devstack("up", ORDER_HISTORY_SESSION_TIMEOUT_MS="3600000", READY_TIMEOUT="15")
        assert failed.returncode == 1, failed.stderr
        assert "error: not ready after 15s: no consumer holds goods.events[0]" in failed.stderr, failed.stderr
        assert f"(without a partition: {CONSUMER})" in failed.stderr, failed.stderr
        assert "InvalidSessionTimeoutError" in failed.stderr, failed.stderr  # from the consumer's log
        stop_process(env, CONSUMER)
        up = devstack("up")
        assert up.returncode == 0, up.stderr
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_three_node_kafka_and_a_replica_up_then_down() -> None:
    """`make up KAFKA_BROKERS=3 PG_REPLICA=1`: three Kafka nodes and a hot standby that the
    order-history API reads; remembered by `status` and `down`; one node refused afterwards."""
    state_dir = sessions.claim(sessions.SESSIONS / f"test-cluster-{free_port()}")
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
        status = json.loads(devstack("status", "--json").stdout)  # without the variables: remembered
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
