"""What runs of a local stack, and how it is told: `make status` and the summary closing `make up`.

Contract: `stack_status()` gives each piece of a stack (PostgreSQL, its replica,
Kafka, Prometheus, every process, and any other process with a PID file in the
stack's run directory) its state, RUNNING, EXITED or STOPPED (devstack/processes.py),
with PIDs, address and log file; `dump()` writes it as JSON (`status --json`).
`render_status()` writes it as people read it, a line per piece, with the exit
status `devstack status` returns (STATUS_*). `print_up_summary()` is what `make up`
prints once all is up. Nothing here starts or stops anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from devstack.config import StackConfig
from devstack.kafka import KafkaCluster
from devstack.paths import short
from devstack.postgres import PostgresServer
from devstack.processes import EXITED, RUNNING, STOPPED, ManagedProcess
from devstack.prometheus import PrometheusServer

# `devstack status`'s exit status: LSB's for a service's status (0 running, 1 dead with its PID file
# left, 3 not running), so that a script can tell a crash from a stack that was never started or stopped.
STATUS_ALL_RUNNING = 0
STATUS_EXITED = 1
STATUS_STOPPED = 3


class Parts(Protocol):
    """What a status report reads of a stack (devstack/stack.py's Stack)."""

    config: StackConfig
    logs: Path
    run_dir: Path
    postgres: PostgresServer
    replica: PostgresServer | None
    kafka: KafkaCluster
    prometheus: PrometheusServer

    def api_ports(self) -> dict[str, int]: ...

    def processes(self) -> list[ManagedProcess]: ...


def stack_status(stack: Parts) -> dict[str, dict[str, object]]:
    """Each piece of the stack: its "state" (RUNNING, EXITED or STOPPED), PIDs, address and log."""
    out: dict[str, dict[str, object]] = {
        "postgres": {
            "port": stack.config.pg_port,
            "running": stack.postgres.running(),
            "state": _postgres_state(stack.postgres),
            "pid": stack.postgres.postmaster_pid(),
            "log": str(stack.postgres.log_file),
        },
        "kafka": {
            "bootstrap": stack.kafka.bootstrap,
            "running": stack.kafka.running(),
            "state": _worst([n.process.state() for n in stack.kafka.nodes]),
            "nodes": len(stack.kafka.nodes),
            "pids": stack.kafka.pids(),
            "log": ", ".join(str(n.process.log_file) for n in stack.kafka.nodes),
        },
    }
    if stack.replica is not None:
        out["postgres-replica"] = {
            "port": stack.config.pg_replica_port,
            "running": stack.replica.running(),
            "state": _postgres_state(stack.replica),
            "pid": stack.replica.postmaster_pid(),
            "log": str(stack.replica.log_file),
        }
    prometheus = stack.prometheus.process
    if stack.config.prometheus_port or prometheus.pid_file.exists():
        out["prometheus"] = {"url": stack.prometheus.url, **_process_status(prometheus)}
    ports = stack.api_ports()
    procs = stack.processes()
    for p in procs:
        entry = _process_status(p)
        if p.name in ports:
            entry["url"] = f"http://127.0.0.1:{ports[p.name]}"
        out[p.name] = entry
    # Others started in this stack: more consumers than ORDER_HISTORY_CONSUMERS says now.
    known = {p.name for p in procs}
    for pid_file in sorted(stack.run_dir.glob("*.pid")):
        if pid_file.stem in known:
            continue
        try:
            marker = pid_file.read_text().splitlines()[1]
        except (OSError, IndexError):
            continue
        other = ManagedProcess(
            name=pid_file.stem, argv=[marker], pid_file=pid_file, log_file=stack.logs / f"{pid_file.stem}.log"
        )
        out[other.name] = _process_status(other)
    return out


def print_up_summary(stack: Parts) -> None:
    """What `make up` prints once all is up: where each piece answers, its logs and data."""
    c = stack.config
    print()
    print("order-history stack is up")
    print(f"  order API          http://127.0.0.1:{c.order_port}/docs")
    print(f"  goods API          http://127.0.0.1:{c.goods_port}/docs")
    print(f"  order-history API  http://127.0.0.1:{c.history_port}/v1/order-history")
    print(f"  PostgreSQL         127.0.0.1:{c.pg_port} (databases orders, goods, order_history)")
    if c.pg_replica_port:
        print(f"  PostgreSQL replica 127.0.0.1:{c.pg_replica_port} (hot standby; the order-history API reads here)")
    k = stack.kafka
    print(f"  Kafka              {k.bootstrap} (topics order.events, goods.events)")
    if len(k.nodes) > 1:
        print(
            f"                     {len(k.nodes)} nodes, replication factor {k.replication_factor}, "
            f"min.insync.replicas {k.min_insync_replicas}"
        )
    if c.prometheus_port:
        print(f"  Prometheus         {stack.prometheus.url}/alerts (rules: deploy/prometheus/alerts.yml)")
    print(f"  logs               {stack.logs}/")
    print(f"  data               {stack.config.state_dir}/ (pgdata, kafka)")
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
        rows.append((name, state, pid_text, where, short(*str(entry.get("log", "")).split(", "))))
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


def dump(status: Mapping[str, object]) -> str:
    return json.dumps(status, indent=2)
