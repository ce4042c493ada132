"""A real Apache Kafka (KRaft) assembled from Maven Central jars: one node, or a cluster of
combined broker/controller nodes on loopback.

With three nodes or more, topics get replication factor 3 and
`min.insync.replicas=2`: an acknowledged write (acks=all) is on two nodes at
least, and any one node may die. Every node can also open a SASL listener (and
a SASL_SSL one, with a certificate authority made here by `openssl`), so that
tests run the clients through authentication and TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.errors import StackError
from devstack.processes import ManagedProcess, port_accepts, port_is_free, run
from devstack.progress import say, step
from shared import events

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
LOG4J2 = HERE / "kafka" / "log4j2.properties"

# The event topics (from the event catalogue) and their dead-letter topics.
TOPICS: tuple[str, ...] = (*events.TOPICS, *(events.dlq_topic(t) for t in events.TOPICS))

# The one account of the SASL listeners (local stacks and tests only), known to
# the broker as PLAIN and as SCRAM-SHA-256 / SCRAM-SHA-512 credentials.
SASL_USERNAME = "order-history"
SASL_PASSWORD = "order-history-dev-secret"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def install_jars(libs_dir: Path) -> Path:
    """Fetch the broker's jars once (`mvn dependency:copy-dependencies`)."""
    stamp = libs_dir / ".pom-sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest:
        return libs_dir
    if shutil.which("java") is None:
        raise StackError(
            "Java is not installed: the Kafka broker needs Java 17+ (apt-get install -y openjdk-17-jre-headless)."
        )
    if shutil.which("mvn") is None:
        raise StackError("Maven is not installed: it fetches the Kafka broker's jars (apt-get install -y maven).")
    if libs_dir.exists():
        shutil.rmtree(libs_dir)
    with step(f"downloading Apache Kafka jars from Maven Central into {libs_dir} (first run only)"):
        run(
            ["mvn", "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={libs_dir}"],
            "mvn dependency:copy-dependencies (Kafka jars)",
        )
    stamp.write_text(digest + "\n")
    return libs_dir


def make_tls(directory: Path) -> Path:
    """A certificate authority and a broker certificate for 127.0.0.1 (once); the CA's file.

    `ca.pem` is what clients trust (KAFKA_SSL_CAFILE); `broker.pem` holds the
    broker's unencrypted PKCS#8 key and certificate, Kafka's PEM key store.
    """
    ca = directory / "ca.pem"
    keystore = directory / "broker.pem"
    if ca.exists() and keystore.exists():
        return ca
    if shutil.which("openssl") is None:
        raise StackError("openssl is not installed: the SASL_SSL listener needs it (apt-get install -y openssl).")
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        run(["openssl", *args], "openssl " + args[0], cwd=str(directory))

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=order-history dev CA",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "broker.key",
            "-out", "broker.csr")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "3650", "-extfile", "san.cnf", "-out", "broker.crt")  # fmt: skip
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", "broker.key", "-out", "broker.p8")
    keystore.write_text((directory / "broker.p8").read_text() + (directory / "broker.crt").read_text())
    return ca


@dataclass
class KafkaNode:
    """One combined broker/controller process."""

    home: Path  # config, data and PID file live here
    libs_dir: Path
    node_id: int = 1
    port: int = 9092
    controller_port: int = 9093
    sasl_port: int = 0  # SASL_PLAINTEXT listener (0: none)
    sasl_ssl_port: int = 0  # SASL_SSL listener (0: none)
    heap: str = "512m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (self.port, self.controller_port, self.sasl_port, self.sasl_ssl_port) if p)

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name=f"kafka-{self.node_id}",
            argv=[
                "java",
                f"-Xmx{self.heap}",
                f"-Xms{self.heap}",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                f"-Dkafka.logs.dir={self.home / 'logs'}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.Kafka",
                str(self.config_file),
            ],
            pid_file=self.home / "kafka.pid",
            log_file=self.home / "kafka.log",
        )

    def write_config(self, settings: dict[str, str], tls: Path) -> None:
        """`settings`: the cluster's; `tls`: where `make_tls` put the broker's key store."""
        listeners = {"PLAINTEXT": self.port, "CONTROLLER": self.controller_port}
        if self.sasl_port:
            listeners["SASL_PLAINTEXT"] = self.sasl_port
        if self.sasl_ssl_port:
            listeners["SASL_SSL"] = self.sasl_ssl_port
        own = {
            "node.id": str(self.node_id),
            "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
            "advertised.listeners": ",".join(
                f"{name}://127.0.0.1:{port}" for name, port in listeners.items() if name != "CONTROLLER"
            ),
            "listener.security.protocol.map": ",".join(
                f"{name}:{'PLAINTEXT' if name == 'CONTROLLER' else name}" for name in listeners
            ),
            "log.dirs": str(self.data_dir),
        }
        if self.sasl_port or self.sasl_ssl_port:
            own |= _sasl_settings([name for name in listeners if name.startswith("SASL")])
        if self.sasl_ssl_port:
            own |= {
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(tls / "broker.pem"),
            }
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in {**settings, **own}.items()))

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format(self, cluster_id: str) -> None:
        if self.formatted():
            return
        scram = [f"{m}=[name={SASL_USERNAME},password={SASL_PASSWORD}]" for m in SASL_MECHANISMS if "SCRAM" in m]
        run(
            [
                "java",
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.config_file),
                "--ignore-formatted",
                *(arg for s in scram for arg in ("--add-scram", s)),
            ],
            f"kafka StorageTool format (node {self.node_id})",
        )

    def running(self) -> bool:
        return self.process.running()

    def start(self) -> None:
        if self.running():
            return
        for port in self.ports:
            if not port_is_free(port):
                raise StackError(
                    f"Kafka port {port} on 127.0.0.1 is taken by another process; stop it or "
                    "choose other ports with KAFKA_PORT=... KAFKA_CONTROLLER_PORT=..."
                )
        self.process.start()

    def stop(self, timeout: float = 30) -> None:
        self.process.stop(timeout=timeout)

    def kill9(self) -> None:
        """A crash: the node killed at once; returns when its ports can be bound again (for the next start)."""
        self.process.kill9()
        deadline = time.monotonic() + 90
        while not all(port_is_free(p) for p in self.ports):
            if time.monotonic() > deadline:
                raise StackError(f"Kafka's ports {self.ports} still taken after SIGKILL")
            time.sleep(0.2)


def _sasl_settings(listeners: Sequence[str]) -> dict[str, str]:
    plain = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USERNAME}="{SASL_PASSWORD}";'
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    out = {"sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS)}
    for listener in listeners:
        for mechanism in SASL_MECHANISMS:
            module = plain if mechanism == "PLAIN" else scram
            out[f"listener.name.{listener.lower()}.{mechanism.lower()}.sasl.jaas.config"] = module
    return out


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
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError, TopicAlreadyExistsError

        deadline = deadline or time.monotonic() + 60
        partitions = partitions or self.partitions
        configs = {
            # Event topics keep everything: the read model can be rebuilt from them.
            "retention.ms": "-1",
            "min.insync.replicas": str(self.min_insync_replicas),
        }
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
            try:
                await admin.start()
                existing = set(await admin.list_topics())
                missing = [t for t in topics if t not in existing]
                if missing:
                    response = await admin.create_topics(
                        [NewTopic(t, partitions, self.replication_factor, topic_configs=configs) for t in missing]
                    )
                    for topic, code, *_ in getattr(response, "topic_errors", []):
                        if code not in (0, TopicAlreadyExistsError.errno):
                            raise KafkaError(f"create topic {topic}: error {code}")
                    say(
                        f"created topics {', '.join(missing)} with {partitions} partitions, "
                        f"replication factor {self.replication_factor}"
                    )
                    await self._wait_led(missing, partitions, deadline)
                return
            except TopicAlreadyExistsError:
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"Kafka is not answering on {self.bootstrap}: {exc}") from exc
                await asyncio.sleep(0.5)
            finally:
                await admin.close()

    async def _wait_led(self, topics: Sequence[str], partitions: int, deadline: float) -> None:
        """Until every node's metadata names a leader for each partition of the new topics: a creation
        is acknowledged by the controller before the other nodes know of it."""
        from aiokafka.errors import KafkaError

        want = {(t, p) for t in topics for p in range(partitions)}
        while True:
            try:
                led = {tp for tp, p in (await self.describe(topics)).items() if p["leader"] >= 0}
                if want <= led:
                    return
            except KafkaError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"the new topics {', '.join(topics)} have no leader for every partition in time")
            await asyncio.sleep(0.2)

    async def describe(self, topics: Sequence[str]) -> dict[tuple[str, int], dict[str, Any]]:
        """(topic, partition) → {"leader": node id, "replicas": [...], "isr": [...]}, as the cluster sees it."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        try:
            await admin.start()
            out: dict[tuple[str, int], dict[str, Any]] = {}
            for topic in await admin.describe_topics(list(topics)):
                for p in topic["partitions"]:
                    out[(topic["topic"], p["partition"])] = {
                        "leader": p["leader"],
                        "replicas": list(p["replicas"]),
                        "isr": list(p["isr"]),
                    }
            return out
        finally:
            await admin.close()

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
