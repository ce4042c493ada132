"""`KafkaNode`: one combined Kafka broker/controller process (KRaft) on loopback, run from the Maven jars.

Contract: a node keeps its configuration, data, log and PID file under its
`home`. `write_config()` writes its server.properties (the cluster's settings
and its own listeners); `format()` formats its storage once, with the
cluster's id and the SASL account's SCRAM credentials (devstack/kafka_security.py);
`start()` refuses a port another process holds (StackError); `stop()` and
`kill9()` end it, the latter as a crash. Forming a cluster of nodes and
waiting for them is devstack/kafka.py's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from devstack.errors import StackError
from devstack.kafka_security import SASL_MECHANISMS, SASL_PASSWORD, SASL_USERNAME, sasl_settings
from devstack.processes import ManagedProcess, port_is_free, run

LOG4J2 = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"


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
            own |= sasl_settings([name for name in listeners if name.startswith("SASL")])
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
