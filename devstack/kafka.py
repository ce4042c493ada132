"""A real single-node Apache Kafka broker (KRaft) assembled from Maven Central jars."""

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
from dataclasses import dataclass
from pathlib import Path

from devstack.errors import StackError
from devstack.processes import ManagedProcess, port_accepts, port_is_free, run
from devstack.progress import say, step
from shared import events

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
LOG4J2 = HERE / "kafka" / "log4j2.properties"

# The event topics (from the event catalogue) and their dead-letter topics.
TOPICS: tuple[str, ...] = (*events.TOPICS, *(events.dlq_topic(t) for t in events.TOPICS))


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


@dataclass
class KafkaBroker:
    home: Path  # config, data and PID file live here
    libs_dir: Path
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 3
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
    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="kafka",
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

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    f"num.partitions={self.partitions}",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=5",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    def format(self) -> None:
        if self.formatted():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid: a leading "-" reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        with step("formatting Kafka storage (KRaft)"):
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
                ],
                "kafka StorageTool format",
            )

    def running(self) -> bool:
        return self.process.running()

    def start(self, wait: float = 120.0, topics: Sequence[str] = TOPICS) -> None:
        if shutil.which("java") is None:
            raise StackError("Java is not installed: the Kafka broker needs Java 17+.")
        install_jars(self.libs_dir)
        if not self.running():
            for port in (self.port, self.controller_port):
                if not port_is_free(port):
                    raise StackError(
                        f"Kafka port {port} on 127.0.0.1 is taken by another process; stop it or "
                        "choose other ports with KAFKA_PORT=... KAFKA_CONTROLLER_PORT=..."
                    )
            self.write_config()
            self.format()
            self.process.start()
        with step(f"waiting for Kafka on {self.bootstrap}"):
            deadline = time.monotonic() + wait
            while not port_accepts(self.port):
                if not self.running():
                    raise StackError(f"Kafka exited during start; last log lines:\n{self.process.tail()}")
                if time.monotonic() > deadline:
                    raise StackError(
                        f"Kafka did not open {self.bootstrap} within {wait:.0f}s; see {self.process.log_file}"
                    )
                time.sleep(0.2)
            asyncio.run(self.ensure_topics(topics, deadline))

    async def ensure_topics(self, topics: Sequence[str], deadline: float | None = None) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError, TopicAlreadyExistsError

        deadline = deadline or time.monotonic() + 60
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
            try:
                await admin.start()
                existing = set(await admin.list_topics())
                missing = [t for t in topics if t not in existing]
                if missing:
                    # Event topics keep everything: the read model can be rebuilt from them.
                    response = await admin.create_topics(
                        [NewTopic(t, self.partitions, 1, topic_configs={"retention.ms": "-1"}) for t in missing]
                    )
                    for topic, code, *_ in getattr(response, "topic_errors", []):
                        if code not in (0, TopicAlreadyExistsError.errno):
                            raise KafkaError(f"create topic {topic}: error {code}")
                    say(f"created topics {', '.join(missing)} with {self.partitions} partitions")
                return
            except TopicAlreadyExistsError:
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"Kafka is not answering on {self.bootstrap}: {exc}") from exc
                await asyncio.sleep(0.5)
            finally:
                await admin.close()

    def stop(self) -> None:
        if self.running():
            with step("stopping Kafka"):
                self.process.stop(timeout=30)

    def kill9(self) -> None:
        """A crash: the broker killed at once; returns when its ports can be bound again (for the next start)."""
        self.process.kill9()
        deadline = time.monotonic() + 90
        while not (port_is_free(self.port) and port_is_free(self.controller_port)):
            if time.monotonic() > deadline:
                raise StackError(f"Kafka's ports {self.port}/{self.controller_port} still taken after SIGKILL")
            time.sleep(0.2)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections open but answers nothing (a hung broker)."""
        self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.signal(signal.SIGCONT)


if __name__ == "__main__":  # pragma: no cover - manual debugging aid
    print(install_jars(Path(sys.argv[1])))
