"""`StackConfig`: what one local stack is made of (its directory, ports, node counts, timeouts).

Contract: `StackConfig.from_env()` reads the variables `make up VAR=...` passes
(unset or empty: the default; a port or count that is not a whole number:
StackError naming it); Kafka's node count and the replica's port are, unless
set, what the stack in STACK_DIR was started with (`remembered()`), so that
`make down`, `status` and `up` go on with it. Tests and benchmarks build one
in code. Nothing here starts anything (devstack/stack.py does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack.errors import StackError
from devstack.paths import REPO


@dataclass
class StackConfig:
    state_dir: Path = REPO / ".devstack"
    pg_port: int = 5432
    # PG_REPLICA=1: a hot standby of the cluster on this port, which the order-history API queries (0: none).
    pg_replica_port: int = 0
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_partitions: int = 3
    # KAFKA_BROKERS=3: a KRaft cluster of three nodes, node i on kafka_port + 2i and kafka_controller_port + 2i.
    kafka_brokers: int = 1
    # Explicit (client, controller) ports per node instead (the test stacks' free ports).
    kafka_node_ports: tuple[tuple[int, int], ...] = ()
    # (SASL_PLAINTEXT, SASL_SSL) listener ports per node: the test stack's authenticated listeners (none by default).
    kafka_sasl_ports: tuple[tuple[int, int], ...] = ()
    order_port: int = 8080
    goods_port: int = 8081
    history_port: int = 8082
    # /metrics of the relays and the consumer (0: none); consumer i of several serves consumer_metrics_port + i.
    order_relay_metrics_port: int = 8090
    goods_relay_metrics_port: int = 8091
    consumer_metrics_port: int = 8092
    consumers: int = 1
    # Prometheus scraping the stack with deploy/prometheus's rules (0: none; PROMETHEUS=1 starts it).
    prometheus_port: int = 0
    # How long `up` waits for the APIs' /readyz and the consumers' partitions (READY_TIMEOUT).
    ready_timeout: float = 120.0
    fast_pg: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kafka_brokers not in (1, 3):
            raise StackError(f"KAFKA_BROKERS must be 1 or 3, got {self.kafka_brokers}")

    def kafka_ports(self) -> list[tuple[int, int]]:
        if self.kafka_node_ports:
            return list(self.kafka_node_ports)
        return [(self.kafka_port + 2 * i, self.kafka_controller_port + 2 * i) for i in range(self.kafka_brokers)]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StackConfig:
        def num(name: str, default: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return int(raw)
            except ValueError as exc:
                raise StackError(f"{name} must be a whole number, got {raw!r}") from exc

        state_dir = Path(env.get("STACK_DIR") or REPO / ".devstack")

        def replica_port() -> int:
            # As Kafka's nodes: once started with a replica, the stack keeps it until PG_REPLICA=0 or `make clean`.
            wanted = env.get("PG_REPLICA", "")
            if wanted == "0":
                return 0
            if wanted:
                return num("PG_REPLICA_PORT", 5433)
            return remembered(state_dir, "pg-replica-port") or 0

        return cls(
            state_dir=state_dir,
            pg_port=num("PG_PORT", 5432),
            pg_replica_port=replica_port(),
            kafka_port=num("KAFKA_PORT", 9092),
            kafka_controller_port=num("KAFKA_CONTROLLER_PORT", 9093),
            kafka_partitions=num("KAFKA_PARTITIONS", 3),
            # Unless told otherwise, `make down`, `status` and `up` go on with the Kafka this stack was made with.
            kafka_brokers=num("KAFKA_BROKERS", remembered(state_dir, "kafka-nodes") or 1),
            order_port=num("ORDER_PORT", 8080),
            goods_port=num("GOODS_PORT", 8081),
            history_port=num("ORDER_HISTORY_PORT", 8082),
            order_relay_metrics_port=num("ORDER_RELAY_METRICS_PORT", 8090),
            goods_relay_metrics_port=num("GOODS_RELAY_METRICS_PORT", 8091),
            consumer_metrics_port=num("ORDER_HISTORY_METRICS_PORT", 8092),
            consumers=num("ORDER_HISTORY_CONSUMERS", 1),
            prometheus_port=num("PROMETHEUS_PORT", 9090) if env.get("PROMETHEUS", "0") not in ("", "0") else 0,
            ready_timeout=num("READY_TIMEOUT", 120),
        )


def remembered(state_dir: Path, name: str) -> int | None:
    """What the stack in `state_dir` was started with: "kafka-nodes" (how many), "pg-replica-port"."""
    try:
        return int((state_dir / name).read_text().strip())
    except (OSError, ValueError):
        return None
