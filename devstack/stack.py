"""The whole local stack: PostgreSQL, Kafka, migrations, APIs, relays, consumer.

Contract: `Stack(config)` holds one stack's pieces as its StackConfig
(devstack/config.py) says, none started. `up()` starts what is not running
(PostgreSQL and its replica, Kafka, the migrations, the APIs, relays and
consumers, Prometheus) and returns once all is ready and has stayed up
(devstack/startup.py), else raises StackError; `down()` stops all the stack
started, its data kept; `clean()` also deletes its data and logs.
`service_env()` is the environment of every service process; `status()` and
`print_summary()` say what runs (devstack/status.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from devstack import startup
from devstack.config import StackConfig, remembered
from devstack.databases import DATABASES
from devstack.errors import StackError
from devstack.kafka import KafkaCluster
from devstack.paths import REPO, kafka_libs_dir
from devstack.postgres import PostgresServer
from devstack.processes import ManagedProcess, port_is_free, run, stop_by_pid_file
from devstack.progress import say, step
from devstack.prometheus import PrometheusServer
from devstack.status import print_up_summary, stack_status

# The order-history API's cursor key on this machine's stacks (`make up`, tests, benchmarks): a key of
# their own, so that the API's warning about the public development key shows only where one serves
# without a key set. It is no secret either: these stacks listen on loopback only.
CURSOR_KEY = "devstack-cursor-key"

# REPO is devstack/paths.py's; devstack/compose imports it from here.
__all__ = ["CURSOR_KEY", "REPO", "Stack"]


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        root = config.state_dir
        self.logs = root / "logs"
        self.run_dir = root / "run"
        self.postgres = PostgresServer(
            data_dir=root / "pgdata", port=config.pg_port, log_file=self.logs / "postgres.log", fast=config.fast_pg
        )
        # The replica's server, configured or not: `down` and `clean` also stop and delete one started before.
        self.replica_server = PostgresServer(
            data_dir=root / "pgdata-replica",
            port=config.pg_replica_port or 5433,
            log_file=self.logs / "postgres-replica.log",
            fast=config.fast_pg,
            primary=self.postgres,
        )
        self.replica = self.replica_server if config.pg_replica_port else None
        ports = config.kafka_ports()
        self.kafka = KafkaCluster.on_ports(
            # A cluster keeps its nodes apart from the single node's data: their logs are different histories.
            home=root / ("kafka" if len(ports) == 1 else "kafka-cluster"),
            libs_dir=kafka_libs_dir(),
            ports=ports,
            partitions=config.kafka_partitions,
            sasl_ports=config.kafka_sasl_ports,
        )
        self.prometheus = PrometheusServer(home=root / "prometheus", port=config.prometheus_port or 9090)

    # -- environment shared by every service process -------------------------
    def service_env(self) -> dict[str, str]:
        c = self.config
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap}
        for db in DATABASES:
            env[f"{db.service}_DATABASE_URL"] = db.writer.url(db.name, c.pg_port)
            env[f"{db.service}_OWNER_DATABASE_URL"] = db.owner.url(db.name, c.pg_port)
        history = DATABASES[-1]
        env["ORDER_HISTORY_QUERY_DATABASE_URL"] = history.reader.url(history.name, c.pg_replica_port or c.pg_port)
        for db in DATABASES[:2]:  # what reconcile reads the command databases as
            env[f"ORDER_HISTORY_{db.service}_READER_DATABASE_URL"] = db.reader.url(db.name, c.pg_port)
        env |= {
            "ORDER_HOST": "127.0.0.1",
            "ORDER_PORT": str(c.order_port),
            "GOODS_HOST": "127.0.0.1",
            "GOODS_PORT": str(c.goods_port),
            "ORDER_HISTORY_HOST": "127.0.0.1",
            "ORDER_HISTORY_PORT": str(c.history_port),
            "ORDER_RELAY_METRICS_PORT": str(c.order_relay_metrics_port),
            "GOODS_RELAY_METRICS_PORT": str(c.goods_relay_metrics_port),
            "ORDER_HISTORY_METRICS_PORT": str(c.consumer_metrics_port),
            "ORDER_HISTORY_CURSOR_KEY": CURSOR_KEY,
            "LOG_FORMAT": "json",
        }
        env.update(c.extra_env)
        return env

    def consumer_name(self, i: int) -> str:
        return f"order_history-consumer-{i}"

    def processes(self) -> list[ManagedProcess]:
        def proc(name: str, *args: str) -> ManagedProcess:
            return ManagedProcess(
                name=name,
                argv=[sys.executable, "-m", *args],
                pid_file=self.run_dir / f"{name}.pid",
                log_file=self.logs / f"{name}.log",
                env=self.service_env(),
                cwd=REPO,
            )

        procs = [
            proc("order-api", "order", "api"),
            proc("goods-api", "goods", "api"),
            proc("order_history-api", "order_history", "api"),
            proc("order-relay", "order", "relay"),
            proc("goods-relay", "goods", "relay"),
        ]
        for i in range(self.config.consumers):
            p = proc(self.consumer_name(i), "order_history", "consumer")
            p.argv = [*p.argv, f"--instance={i}"]
            if self.config.consumer_metrics_port:
                p.env = {**(p.env or {}), "ORDER_HISTORY_METRICS_PORT": str(self.config.consumer_metrics_port + i)}
            procs.append(p)
        return procs

    def metrics_targets(self) -> dict[str, list[str]]:
        """Prometheus job name → the host:port of each process serving /metrics."""
        c = self.config

        def at(*ports: int) -> list[str]:
            return [f"127.0.0.1:{port}" for port in ports if port]

        return {
            "order-api": at(c.order_port),
            "goods-api": at(c.goods_port),
            "order-history-api": at(c.history_port),
            "order-relay": at(c.order_relay_metrics_port),
            "goods-relay": at(c.goods_relay_metrics_port),
            "order-history-consumer": at(*(c.consumer_metrics_port + i for i in range(c.consumers)))
            if c.consumer_metrics_port
            else [],
        }

    def api_ports(self) -> dict[str, int]:
        c = self.config
        return {"order-api": c.order_port, "goods-api": c.goods_port, "order_history-api": c.history_port}

    # -- lifecycle -----------------------------------------------------------
    def start_infrastructure(self) -> None:
        self._check_kafka_history()
        self.postgres.start()
        self.postgres.create_databases()
        remembered_replica = self.config.state_dir / "pg-replica-port"
        if self.replica is not None:
            self.replica.start()
            remembered_replica.write_text(f"{self.config.pg_replica_port}\n")
        else:
            self.replica_server.stop()  # PG_REPLICA=0 after a replica: the API no longer reads it
            remembered_replica.unlink(missing_ok=True)
        self.kafka.start()

    def _check_kafka_history(self) -> None:
        """The read model's positions are offsets of one Kafka's logs: refuse to pair it with the other."""
        nodes = len(self.kafka.nodes)
        before = remembered(self.config.state_dir, "kafka-nodes")
        if before is not None and self.postgres.initialised() and before != nodes:
            raise StackError(
                f"this stack's databases were filled through a Kafka of {before} node(s), not {nodes}: "
                f"run `make clean` before switching, or keep KAFKA_BROKERS={before}"
            )
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        (self.config.state_dir / "kafka-nodes").write_text(f"{nodes}\n")

    def migrate(self) -> None:
        with step("applying migrations"):
            for service in ("order", "goods", "order_history"):
                run(
                    [sys.executable, "-m", service, "migrate"],
                    f"migrations of {service}",
                    env={**os.environ, **self.service_env()},
                    cwd=str(REPO),
                )

    def up(self, settle: float = startup.SETTLE_SECONDS) -> None:
        """Start what is not running; return once all is ready and has stayed up `settle` seconds.

        Raises StackError naming a process that exits meanwhile (with the end of
        its log), or what is still not ready after the configured `ready_timeout`.
        """
        self.start_infrastructure()
        self.migrate()
        ports = self.api_ports()
        # The same objects throughout: for a process started here, whether it still runs (and its exit
        # status) is known from the child itself.
        procs = self.processes()
        started = False
        for p in procs:
            if p.running():
                continue
            port = ports.get(p.name)
            if port is not None and not port_is_free(port):
                raise StackError(
                    f"{p.name}: port {port} on 127.0.0.1 is taken by another process; set its *_PORT variable"
                )
            p.start()
            started = True
        startup.wait_ready(
            procs, self.consumers_of(procs), self.api_ports(), self.kafka, self.logs, self.config.ready_timeout
        )
        watched = [*procs, *(n.process for n in self.kafka.nodes)]
        if self.config.prometheus_port:
            started = started or not self.prometheus.running()
            self.prometheus.start(self.metrics_targets())
            watched.append(self.prometheus.process)
        if started:
            startup.settle(watched, (self.postgres, self.replica), settle)

    def consumers_of(self, procs: Sequence[ManagedProcess]) -> list[tuple[ManagedProcess, int]]:
        """The consumer processes among `procs`, each with its metrics port (0: none, read its log)."""
        by_name = {p.name: p for p in procs}
        port = self.config.consumer_metrics_port
        return [
            (by_name[self.consumer_name(i)], port + i if port else 0)
            for i in range(self.config.consumers)
            if self.consumer_name(i) in by_name
        ]

    def down(self) -> None:
        for p in reversed(self.processes()):
            if p.running():
                say(f"stopping {p.name}")
            p.stop()
        # Anything else started in this stack (more consumers than configured now, test processes).
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            stop_by_pid_file(pid_file)
        if self.prometheus.running():
            say("stopping prometheus")
        self.prometheus.stop()
        self.kafka.stop()
        self.replica_server.stop()
        # Nodes of the other layout (KAFKA_BROKERS changed while they ran), or a test session's cluster.
        for pattern in ("kafka/kafka.pid", "kafka-cluster/node-*/kafka.pid", "cluster/kafka-cluster/node-*/kafka.pid"):
            for pid_file in sorted(self.config.state_dir.glob(pattern)):
                stop_by_pid_file(pid_file, timeout=30)
        self.postgres.stop()

    def clean(self) -> None:
        """Stop everything, then delete the stack's data and logs, including a
        PostgreSQL cluster kept outside the checkout (see PostgresServer)."""
        self.down()
        root = self.config.state_dir
        for path in (
            root / "pgdata",
            root / "pgdata-replica",
            root / "kafka",
            root / "kafka-cluster",
            root / "kafka-nodes",
            root / "pg-replica-port",
            root / "prometheus",
            self.logs,
            self.run_dir,
            self.postgres.relocated_to,
            self.replica_server.relocated_to,
        ):
            if path is not None and path.is_dir():
                say(f"deleting {path}")
                shutil.rmtree(path)
            elif path is not None:
                path.unlink(missing_ok=True)

    def status(self) -> dict[str, dict[str, object]]:
        """Each piece of the stack: its "state" (RUNNING, EXITED or STOPPED), PIDs, address and log."""
        return stack_status(self)

    def print_summary(self) -> None:
        """What `make up` prints once all is up."""
        print_up_summary(self)
