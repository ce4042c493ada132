"""The stacks the black-box tests run against, seen from outside as a user sees them.

A target gives the three APIs' base URLs, runs operator commands
(`python -m order_history status` ...), kills, stops and brings back services
named as in docker-compose.yml, and tells which Kafka node leads a partition:

- DevstackTarget: `python -m devstack up` (what `make up` runs) on free ports in
  a directory of its own; services are processes with PID files; operator
  commands run here with the stack's environment. Used by `make test`.
- ComposeTarget: the stack `docker compose up` started (`make compose-test`
  starts it and names it in BLACKBOX_COMPOSE); services are containers;
  operator commands run in the order-history API's container (`docker compose exec`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devstack import sessions
from devstack.config import StackConfig
from devstack.paths import REPO
from devstack.processes import ManagedProcess, free_port
from devstack.stack import Stack

# Services the tests kill or stop, as docker-compose.yml names them.
CONSUMER = "order-history-consumer"
ORDER_RELAY = "order-relay"
GOODS_RELAY = "goods-relay"


@dataclass(frozen=True)
class PartitionState:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class Target(ABC):
    name: str
    urls: Mapping[str, str]  # "order", "goods", "order_history" -> base URL
    kafka_nodes: int

    @abstractmethod
    def operator(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`python -m ARGV` with the stack's settings, to its end."""

    @abstractmethod
    def kill(self, *services: str) -> None:
        """SIGKILL these services at once (a crash)."""

    @abstractmethod
    def stop(self, *services: str) -> None:
        """Stop these services the polite way (SIGTERM)."""

    @abstractmethod
    def start(self, *services: str) -> None:
        """Start these stopped services again (`docker compose start`; devstack: `up` starts what is not running)."""

    @abstractmethod
    def restore(self) -> None:
        """Start whatever is not running, as the user would (`make up`, `docker compose up -d`);
        return once every API is ready."""

    def describe_topic(self, topic: str) -> dict[int, PartitionState]:
        """Partition -> leader, replicas and in-sync replicas of a topic, as Kafka's tools print them."""
        raise NotImplementedError(f"{self.name}: no Kafka tools")

    def kafka_service(self, node_id: int) -> str:
        """The service of Kafka node `node_id`."""
        raise NotImplementedError(f"{self.name}: no Kafka nodes to kill")

    def replica_sessions(self) -> int | None:
        """Sessions of the order-history API's read-only role on a PostgreSQL standby; None: no standby."""
        return None

    def operator_json(self, *argv: str) -> dict[str, object]:
        done = self.operator(*argv, "--json")
        assert done.returncode == 0, f"{' '.join(argv)} --json: exit {done.returncode}\n{done.stdout}{done.stderr}"
        loaded = json.loads(done.stdout)
        assert isinstance(loaded, dict), done.stdout
        return loaded


def parse_describe(text: str) -> dict[int, PartitionState]:
    """kafka-topics.sh --describe's partition lines: `Partition: 0  Leader: 2  Replicas: 2,3,1  Isr: 2,3,1`."""
    out: dict[int, PartitionState] = {}
    for line in text.splitlines():
        m = re.search(r"Partition:\s*(\d+)\s+Leader:\s*(-?\d+)\s+Replicas:\s*([\d,]*)\s+Isr:\s*([\d,]*)", line)
        if m:
            ids = [tuple(int(x) for x in group.split(",") if x) for group in (m[3], m[4])]
            out[int(m[1])] = PartitionState(leader=int(m[2]), replicas=ids[0], isr=ids[1])
    return out


class DevstackTarget(Target):
    """`python -m devstack up` on free ports, in .devstack/test-blackbox-<port>/."""

    name = "devstack"
    kafka_nodes = 1
    # docker-compose.yml's service names -> devstack's process names
    PROCESSES: Mapping[str, str] = {
        "order-api": "order-api",
        "goods-api": "goods-api",
        "order-history-api": "order_history-api",
        ORDER_RELAY: "order-relay",
        GOODS_RELAY: "goods-relay",
        CONSUMER: "order_history-consumer-0",
    }

    def __init__(self) -> None:
        self.state_dir = sessions.SESSIONS / f"test-blackbox-{free_port()}"
        ports = {
            name: str(free_port())
            for name in (
                "PG_PORT",
                "ORDER_PORT",
                "GOODS_PORT",
                "ORDER_HISTORY_PORT",
                "ORDER_RELAY_METRICS_PORT",
                "GOODS_RELAY_METRICS_PORT",
                "ORDER_HISTORY_METRICS_PORT",
            )
        }
        ports |= {"KAFKA_PORT": str(free_port()), "KAFKA_CONTROLLER_PORT": str(free_port())}
        self.env = {**os.environ, "STACK_DIR": str(self.state_dir), "PROMETHEUS": "0", **ports}
        self.stack = Stack(StackConfig.from_env(self.env))
        self.urls = {
            "order": f"http://127.0.0.1:{ports['ORDER_PORT']}",
            "goods": f"http://127.0.0.1:{ports['GOODS_PORT']}",
            "order_history": f"http://127.0.0.1:{ports['ORDER_HISTORY_PORT']}",
        }

    def devstack(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devstack", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def up(self) -> None:
        sessions.claim(self.state_dir)  # removed by a later session or `make clean` if this one dies
        self.restore()

    def close(self) -> None:
        self.devstack("down")
        self.devstack("clean")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _process(self, service: str) -> ManagedProcess:
        name = self.PROCESSES[service]
        return next(p for p in self.stack.processes() if p.name == name)

    def operator(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=REPO,
            env={**self.env, **self.stack.service_env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kill(self, *services: str) -> None:
        for service in services:
            self._process(service).kill9()

    def stop(self, *services: str) -> None:
        for service in services:
            self._process(service).stop()

    def start(self, *services: str) -> None:
        self.restore()

    def restore(self) -> None:
        up = self.devstack("up")
        assert up.returncode == 0, f"devstack up failed:\n{up.stdout}{up.stderr}"


class ComposeTarget(Target):
    """The stack of `docker compose up`; BLACKBOX_COMPOSE is the compose command (a JSON list) that names it."""

    name = "compose"
    # The API ports docker-compose.yml publishes on 127.0.0.1.
    urls: Mapping[str, str] = {
        "order": "http://127.0.0.1:8080",
        "goods": "http://127.0.0.1:8081",
        "order_history": "http://127.0.0.1:8082",
    }
    OPERATOR_SERVICE = "order-history-api"

    def __init__(self, compose: Sequence[str]) -> None:
        self.compose = list(compose)
        services = json.loads(self.run("config", "--format", "json").stdout)["services"]
        self.kafka_ids: dict[int, str] = {
            int(svc["environment"]["KAFKA_NODE_ID"]): str(name)
            for name, svc in services.items()
            if "KAFKA_NODE_ID" in (svc.get("environment") or {})
        }
        self.kafka_nodes = len(self.kafka_ids)
        self.replica = "postgres-replica" in services

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.compose, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check:
            assert done.returncode == 0, f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def operator(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-T", self.OPERATOR_SERVICE, "python", "-m", *argv, timeout=timeout, check=False)

    def kill(self, *services: str) -> None:
        self.run("kill", "-s", "KILL", *services)

    def stop(self, *services: str) -> None:
        self.run("stop", *services)

    def start(self, *services: str) -> None:
        self.run("start", *services)

    def restore(self) -> None:
        self.run("up", "-d", "--wait", "--no-build", "--pull", "never", timeout=600)

    def kafka_service(self, node_id: int) -> str:
        return self.kafka_ids[node_id]

    def describe_topic(self, topic: str) -> dict[int, PartitionState]:
        last = ""
        for service in self.kafka_ids.values():  # any node that runs
            done = self.run(
                "exec", "-T", service, "/opt/kafka/bin/kafka-topics.sh", "--bootstrap-server",
                f"{service}:9092", "--describe", "--topic", topic, check=False,
            )  # fmt: skip
            if done.returncode == 0 and (described := parse_describe(done.stdout)):
                return described
            last = done.stdout + done.stderr
        raise AssertionError(f"no Kafka node described {topic}:\n{last}")

    def replica_sessions(self) -> int | None:
        if not self.replica:
            return None
        done = self.run(
            "exec", "-T", "postgres-replica", "psql", "-U", "postgres", "-h", "127.0.0.1", "-tA", "-c",
            "SELECT pg_is_in_recovery(), count(*) FROM pg_stat_activity WHERE usename = 'order_history_reader'",
        )  # fmt: skip
        in_recovery, sessions = done.stdout.strip().split("|")
        assert in_recovery == "t", f"postgres-replica is not a standby: {done.stdout}"
        return int(sessions)


def compose_target_from_env() -> ComposeTarget | None:
    raw = os.environ.get("BLACKBOX_COMPOSE")
    return ComposeTarget(json.loads(raw)) if raw else None
