"""The whole local stack: PostgreSQL, Kafka, migrations, APIs, relays, consumer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.databases import DATABASES
from devstack.errors import StackError
from devstack.kafka import KafkaCluster
from devstack.postgres import PostgresServer
from devstack.processes import (
    EXITED,
    RUNNING,
    STOPPED,
    ManagedProcess,
    pid_alive,
    port_is_free,
    run,
    stop_by_pid_file,
)
from devstack.progress import say, step
from devstack.prometheus import PrometheusServer
from devstack.readiness import ConsumerView, Partition, from_log, from_metrics, partition_names
from shared import events

REPO = Path(__file__).resolve().parent.parent

# How long `up` keeps watching, once everything is ready, that no process it started exits: a process
# that fails on what it meets first (a setting, a port, a record) dies within moments of being ready.
SETTLE_SECONDS = 3.0

# `devstack status`'s exit status: LSB's for a service's status (0 running, 1 dead with its PID file
# left, 3 not running), so that a script can tell a crash from a stack that was never started or stopped.
STATUS_ALL_RUNNING = 0
STATUS_EXITED = 1
STATUS_STOPPED = 3

# The order-history API's cursor key on this machine's stacks (`make up`, tests, benchmarks): a key of
# their own, so that the API's warning about the public development key shows only where one serves
# without a key set. It is no secret either: these stacks listen on loopback only.
CURSOR_KEY = "devstack-cursor-key"


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


def kafka_libs_dir() -> Path:
    # Shared by every stack of this checkout (make up, tests, benchmarks).
    return REPO / ".devstack" / "kafka-libs"


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

    def up(self, settle: float = SETTLE_SECONDS) -> None:
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
        self.wait_ready(procs, self.config.ready_timeout)
        watched = [*procs, *(n.process for n in self.kafka.nodes)]
        if self.config.prometheus_port:
            started = started or not self.prometheus.running()
            self.prometheus.start(self.metrics_targets())
            watched.append(self.prometheus.process)
        if started:
            self.settle(watched, settle)

    def wait_ready(self, procs: Sequence[ManagedProcess], timeout: float) -> None:
        """Until every API's /readyz answers 200 and the consumers hold every partition at its stored position.

        Raises StackError as soon as one of `procs` exits or a consumer halts, and after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        consumers = self.consumers_of(procs)
        with step("waiting for every /readyz to answer 200 and the consumers to take their partitions"):
            pending = dict(self.api_ports())
            expected: frozenset[Partition] | None = None
            while True:
                self.check_running(procs)
                for name, port in list(pending.items()):
                    if readyz(port) == 200:
                        del pending[name]
                if expected is None:
                    expected = self.event_partitions(consumers)
                consumers_lack = self.consumers_waiting(consumers, expected)
                waiting = [f"{name} (/readyz)" for name in pending] + consumers_lack
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    late = [p for p in procs if p.name in pending]
                    late += [p for p, _ in consumers] if consumers_lack else []
                    tails = "".join(f"\nlast lines of {_short(p.log_file)}:\n{p.tail(15, True)}" for p in late)
                    raise StackError(
                        f"not ready after {timeout:.0f}s: {'; '.join(waiting)}; logs in {_short(self.logs)}{tails}"
                    )
                time.sleep(0.2)

    def settle(self, procs: Sequence[ManagedProcess], seconds: float) -> None:
        """Watch for `seconds` that none of `procs` (nor PostgreSQL) exits."""
        with step(f"checking for {seconds:.0f}s that every process keeps running"):
            until = time.monotonic() + seconds
            while True:
                self.check_running(procs)
                for server in (self.postgres, self.replica):
                    if server is not None and not _postgres_alive(server):
                        tail = _tail(server.log_file)
                        raise StackError(f"PostgreSQL exited; last lines of {_short(server.log_file)}:\n{tail}")
                if time.monotonic() >= until:
                    return
                time.sleep(0.2)

    def check_running(self, procs: Sequence[ManagedProcess]) -> None:
        """Raise StackError naming the first of `procs` that has exited, with the end of its log."""
        for p in procs:
            if not p.exited_early():
                continue
            status = p.exit_status()
            if status is None:
                how = "exited"
            elif status < 0:
                how = f"was killed by signal {-status}"
            else:
                how = f"exited with status {status}"
            raise StackError(
                f"{p.name} {how} after it was started; last lines of {_short(p.log_file)}:\n"
                f"{p.tail(since_start=True)}\n"
                f"The rest of the stack keeps running: fix the cause and run `make up` again (it starts what "
                f"is not running), or `make down`. `make status` shows what runs."
            )

    # -- the consumers' readiness (devstack/readiness.py) -------------------
    def consumers_of(self, procs: Sequence[ManagedProcess]) -> list[tuple[ManagedProcess, int]]:
        """The consumer processes among `procs`, each with its metrics port (0: none, read its log)."""
        by_name = {p.name: p for p in procs}
        port = self.config.consumer_metrics_port
        return [
            (by_name[self.consumer_name(i)], port + i if port else 0)
            for i in range(self.config.consumers)
            if self.consumer_name(i) in by_name
        ]

    def event_partitions(self, consumers: Sequence[tuple[ManagedProcess, int]]) -> frozenset[Partition] | None:
        """Every partition of the event topics, as the consumers name them; None while Kafka cannot say."""
        from aiokafka.errors import KafkaError

        if not consumers:
            return frozenset()
        env = {**os.environ, **(consumers[0][0].env or {})}
        prefix = env.get("KAFKA_TOPIC_PREFIX", "")
        topics = [prefix + topic for topic in events.TOPICS]
        try:
            found = frozenset(asyncio.run(self.kafka.describe(topics)))
        except (KafkaError, OSError):
            return None
        absent = sorted(set(topics) - {topic for topic, _ in found})
        if absent:  # the consumers would wait for an assignment for ever
            raise StackError(
                f"the consumers read {', '.join(absent)}, which Kafka does not have: this stack creates "
                f"{', '.join(events.TOPICS)} without a prefix (KAFKA_TOPIC_PREFIX is {prefix!r})"
            )
        return found

    def consumers_waiting(
        self, consumers: Sequence[tuple[ManagedProcess, int]], expected: frozenset[Partition] | None
    ) -> list[str]:
        """What the consumers still lack to be ready (nothing: they are); StackError if one has halted."""
        waiting: list[str] = []
        views: list[ConsumerView] = []
        idle: list[str] = []  # answering, but holding no partition (yet)
        for p, port in consumers:
            view = from_metrics(port) if port else from_log(p.log_since_start())
            if view is None:
                where = f"its /metrics on port {port} does not answer" if port else "no assignment in its log"
                waiting.append(f"{p.name} ({where} yet)")
            elif view.halted:
                raise StackError(
                    f"{p.name} has halted: the positions stored in the read database do not fit the Kafka log, "
                    f'so it applies nothing (README, "Positions that do not fit the log"); '
                    f"last lines of {_short(p.log_file)}:\n{p.tail(since_start=True)}"
                )
            else:
                views.append(view)
                if not view.positioned:
                    idle.append(p.name)
        if not consumers:
            return waiting
        if expected is None:
            waiting.append("the event topics' partitions (Kafka has not described them)")
        else:
            missing = expected.difference(*(v.positioned for v in views))
            if missing:
                without = f" (without a partition: {', '.join(idle)})" if idle else ""
                waiting.append(f"no consumer holds {partition_names(missing)} at its stored position yet{without}")
        return waiting

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
        out: dict[str, dict[str, object]] = {
            "postgres": {
                "port": self.config.pg_port,
                "running": self.postgres.running(),
                "state": _postgres_state(self.postgres),
                "pid": self.postgres.postmaster_pid(),
                "log": str(self.postgres.log_file),
            },
            "kafka": {
                "bootstrap": self.kafka.bootstrap,
                "running": self.kafka.running(),
                "state": _worst([n.process.state() for n in self.kafka.nodes]),
                "nodes": len(self.kafka.nodes),
                "pids": self.kafka.pids(),
                "log": ", ".join(str(n.process.log_file) for n in self.kafka.nodes),
            },
        }
        if self.replica is not None:
            out["postgres-replica"] = {
                "port": self.config.pg_replica_port,
                "running": self.replica.running(),
                "state": _postgres_state(self.replica),
                "pid": self.replica.postmaster_pid(),
                "log": str(self.replica.log_file),
            }
        prometheus = self.prometheus.process
        if self.config.prometheus_port or prometheus.pid_file.exists():
            out["prometheus"] = {"url": self.prometheus.url, **_process_status(prometheus)}
        ports = self.api_ports()
        procs = self.processes()
        for p in procs:
            entry = _process_status(p)
            if p.name in ports:
                entry["url"] = f"http://127.0.0.1:{ports[p.name]}"
            out[p.name] = entry
        # Others started in this stack: more consumers than ORDER_HISTORY_CONSUMERS says now.
        known = {p.name for p in procs}
        for pid_file in sorted(self.run_dir.glob("*.pid")):
            if pid_file.stem in known:
                continue
            try:
                marker = pid_file.read_text().splitlines()[1]
            except (OSError, IndexError):
                continue
            other = ManagedProcess(
                name=pid_file.stem, argv=[marker], pid_file=pid_file, log_file=self.logs / f"{pid_file.stem}.log"
            )
            out[other.name] = _process_status(other)
        return out

    def print_summary(self) -> None:
        c = self.config
        print()
        print("order-history stack is up")
        print(f"  order API          http://127.0.0.1:{c.order_port}/docs")
        print(f"  goods API          http://127.0.0.1:{c.goods_port}/docs")
        print(f"  order-history API  http://127.0.0.1:{c.history_port}/v1/order-history")
        print(f"  PostgreSQL         127.0.0.1:{c.pg_port} (databases orders, goods, order_history)")
        if c.pg_replica_port:
            print(f"  PostgreSQL replica 127.0.0.1:{c.pg_replica_port} (hot standby; the order-history API reads here)")
        k = self.kafka
        print(f"  Kafka              {k.bootstrap} (topics order.events, goods.events)")
        if len(k.nodes) > 1:
            print(
                f"                     {len(k.nodes)} nodes, replication factor {k.replication_factor}, "
                f"min.insync.replicas {k.min_insync_replicas}"
            )
        if c.prometheus_port:
            print(f"  Prometheus         {self.prometheus.url}/alerts (rules: deploy/prometheus/alerts.yml)")
        print(f"  logs               {self.logs}/")
        print(f"  data               {self.config.state_dir}/ (pgdata, kafka)")
        print("  stop with `make down`; wipe data with `make clean`")


def _process_status(p: ManagedProcess) -> dict[str, object]:
    pid = p.pid()
    state = RUNNING if pid is not None else p.state()
    return {"pid": pid, "running": pid is not None, "state": state, "log": str(p.log_file)}


def _postgres_state(server: PostgresServer) -> str:
    if server.running():
        return RUNNING
    # A clean stop removes postmaster.pid; a crash leaves it.
    return EXITED if (server.data_dir / "postmaster.pid").exists() else STOPPED


def _worst(states: Sequence[str]) -> str:
    """One state for several processes (Kafka's nodes): running only if all are."""
    for state in (EXITED, STOPPED):
        if state in states:
            return state
    return RUNNING


def render_status(status: Mapping[str, Mapping[str, object]]) -> tuple[str, int]:
    """`devstack status` as people read it, a line per process, and its exit status (STATUS_*)."""
    rows: list[tuple[str, ...]] = []
    down: list[tuple[str, str]] = []
    for name, entry in status.items():
        state = str(entry.get("state", STOPPED))
        listed = entry.get("pids")
        pids = listed if isinstance(listed, list) else [entry.get("pid")]
        shown = [str(pid) for pid in pids if pid] if state == RUNNING else []
        pid_text = ("pid " if len(shown) == 1 else "pids ") + ", ".join(shown) if shown else ""
        port = entry.get("port")
        where = str(entry.get("url") or entry.get("bootstrap") or (f"127.0.0.1:{port}" if port else ""))
        rows.append((name, state, pid_text, where, _short(*str(entry.get("log", "")).split(", "))))
        if state != RUNNING:
            down.append((name, state))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    columns = [*widths, 0]  # the last column (the log) is not padded
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, columns, strict=True)).rstrip() for row in rows]
    if not down:
        lines.append(f"all {len(rows)} running")
        return "\n".join(lines), STATUS_ALL_RUNNING
    if len(down) == len(rows) and all(state == STOPPED for _, state in down):
        lines.append("the stack is stopped; `make up` starts it")
        return "\n".join(lines), STATUS_STOPPED
    named = ", ".join(f"{name} ({state.removeprefix('not running (').rstrip(')')})" for name, state in down)
    exited = any(state == EXITED for _, state in down)
    why = " The log of a process that exited says why;" if exited else ""
    lines.append(f"not running: {named}.{why} `make up` starts what is not running.")
    return "\n".join(lines), STATUS_EXITED if exited else STATUS_STOPPED


def _short(*paths: str | Path) -> str:
    """Paths under the checkout relative to it, as people type them there (`make` runs there); others whole."""
    return ", ".join(
        str(Path(p).relative_to(REPO)) if Path(p).is_relative_to(REPO) else str(p) for p in paths if str(p)
    )


def _postgres_alive(server: PostgresServer) -> bool:
    # Its PID file and that PID, not `pg_ctl status`: cheap enough to ask several times a second.
    pid = server.postmaster_pid()
    return pid is not None and pid_alive(pid)


def _tail(log_file: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def readyz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def dump(status: Mapping[str, object]) -> str:
    return json.dumps(status, indent=2)
