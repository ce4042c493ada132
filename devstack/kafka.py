"""`KafkaCluster`: a real Apache Kafka (KRaft) assembled from Maven Central jars: one node, or a
cluster of combined broker/controller nodes on loopback.

With three nodes or more, topics get replication factor 3 and
`min.insync.replicas=2`: an acknowledged write (acks=all) is on two nodes at
least, and any one node may die. Every node can also open a SASL listener (and
a SASL_SSL one, with a certificate authority made by `openssl`), so that
tests run the clients through authentication and TLS.

Contract: `start()` prepares what is missing (the jars: devstack/kafka_jars.py;
the TLS files: devstack/kafka_security.py; each node's configuration and
formatted storage: devstack/kafka_node.py), starts the nodes that do not run,
and returns once each accepts connections and the topics exist with a leader
for every partition (devstack/kafka_topics.py); else StackError. `stop()`,
`kill9()`, `pause()` and `resume()` act on every node at once.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import kafka_topics
from devstack.errors import StackError
from devstack.kafka_jars import install_jars
from devstack.kafka_node import KafkaNode
from devstack.kafka_security import make_tls
from devstack.kafka_topics import TOPICS
from devstack.processes import port_accepts
from devstack.progress import step


@dataclass
class KafkaCluster:
    """`len(nodes)` Kafka nodes forming one KRaft quorum (a single node is a cluster of one)."""

    home: Path
    nodes: list[KafkaNode]
    partitions: int = 3
    _cluster_id: str | None = field(default=None, init=False, repr=False)

    @classmethod
    def on_ports(
        cls,
        home: Path,
        libs_dir: Path,
        ports: Sequence[tuple[int, int]],
        partitions: int = 3,
        sasl_ports: Sequence[tuple[int, int]] = (),
    ) -> KafkaCluster:
        """Node i listens on ports[i] (client, controller) and sasl_ports[i] (SASL_PLAINTEXT, SASL_SSL)."""
        single = len(ports) == 1
        nodes = [
            KafkaNode(
                home=home if single else home / f"node-{i + 1}",
                libs_dir=libs_dir,
                node_id=i + 1,
                port=port,
                controller_port=controller,
                sasl_port=sasl_ports[i][0] if sasl_ports else 0,
                sasl_ssl_port=sasl_ports[i][1] if sasl_ports else 0,
            )
            for i, (port, controller) in enumerate(ports)
        ]
        return cls(home=home, nodes=nodes, partitions=partitions)

    # -- addresses and topic settings ------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes if n.sasl_port)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_ssl_port}" for n in self.nodes if n.sasl_ssl_port)

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "ca.pem"

    @property
    def replication_factor(self) -> int:
        return min(3, len(self.nodes))

    @property
    def min_insync_replicas(self) -> int:
        # One node may fail and writes go on; an acknowledged write is on two nodes.
        return 2 if self.replication_factor >= 3 else 1

    def node(self, node_id: int) -> KafkaNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def broker_settings(self) -> dict[str, str]:
        rf, isr = str(self.replication_factor), str(self.min_insync_replicas)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        return {
            "process.roles": "broker,controller",
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "num.partitions": str(self.partitions),
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }

    # -- lifecycle -------------------------------------------------------------
    def cluster_id(self) -> str:
        """The cluster's id, made once and kept beside the nodes (every node is formatted with it)."""
        path = self.home / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: a leading "-" reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster_id + "\n")
        return cluster_id

    def running(self) -> bool:
        return any(n.running() for n in self.nodes)

    def pids(self) -> list[int]:
        return [pid for n in self.nodes if (pid := n.process.pid()) is not None]

    def prepare(self) -> None:
        """Jars, configuration, TLS files and formatted storage, for every node."""
        if shutil.which("java") is None:
            raise StackError("Java is not installed: the Kafka broker needs Java 17+.")
        install_jars(self.nodes[0].libs_dir)
        if any(n.sasl_ssl_port for n in self.nodes):
            make_tls(self.home / "tls")
        settings = self.broker_settings()
        for n in self.nodes:
            n.write_config(settings, self.home / "tls")
        unformatted = [n for n in self.nodes if not n.formatted()]
        if unformatted:
            with step(f"formatting Kafka storage (KRaft, {len(self.nodes)} node(s))"):
                cluster_id = self.cluster_id()
                for n in unformatted:
                    n.format(cluster_id)

    def start(self, wait: float = 120.0, topics: Sequence[str] = TOPICS) -> None:
        stopped = [n for n in self.nodes if not n.running()]
        if stopped:
            self.prepare()
            for n in stopped:
                n.start()
        with step(f"waiting for Kafka on {self.bootstrap}"):
            deadline = time.monotonic() + wait
            for n in self.nodes:
                self.wait_node(n, deadline)
            asyncio.run(self.ensure_topics(topics, deadline))

    def start_node(self, node: KafkaNode, wait: float = 120.0) -> None:
        """Start one stopped node again (after `kill9` or `stop_node`) and wait for its port."""
        node.start()
        self.wait_node(node, time.monotonic() + wait)

    def wait_node(self, node: KafkaNode, deadline: float) -> None:
        while not port_accepts(node.port):
            if not node.running():
                raise StackError(f"Kafka node {node.node_id} exited during start:\n{node.process.tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"Kafka did not open {node.bootstrap} in time; see {node.process.log_file}")
            time.sleep(0.2)

    async def ensure_topics(
        self, topics: Sequence[str], deadline: float | None = None, partitions: int | None = None
    ) -> None:
        """Create those of `topics` that do not exist, with `partitions` (default: the cluster's) each."""
        deadline = deadline or time.monotonic() + 60
        partitions = partitions or self.partitions
        await kafka_topics.ensure_topics(
            self.bootstrap, topics, partitions, self.replication_factor, self.min_insync_replicas, deadline
        )

    async def describe(self, topics: Sequence[str]) -> dict[tuple[str, int], dict[str, Any]]:
        """(topic, partition) → {"leader": node id, "replicas": [...], "isr": [...]}, as the cluster sees it."""
        return await kafka_topics.describe(self.bootstrap, topics)

    def stop(self) -> None:
        running = [n for n in self.nodes if n.running()]
        if running:
            with step("stopping Kafka"):
                for n in running:
                    n.process.signal(signal.SIGTERM)
                for n in running:
                    n.stop()

    def kill9(self) -> None:
        """A crash of every node at once; returns when their ports can be bound again."""
        for n in self.nodes:
            n.kill9()

    def pause(self) -> None:
        """SIGSTOP: the nodes keep their connections open but answer nothing (a hung cluster)."""
        for n in self.nodes:
            n.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        for n in self.nodes:
            n.process.signal(signal.SIGCONT)


if __name__ == "__main__":  # pragma: no cover - manual debugging aid
    print(install_jars(Path(sys.argv[1])))
