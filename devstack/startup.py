"""`make up`'s watch over what it started: until the stack is ready, then for a few seconds more.

Ready: every API's /readyz answers 200, and the consumers together hold every
partition of the event topics at its stored position (devstack/readiness.py
reads what each consumer says). Then `up` watches for `SETTLE_SECONDS` that
nothing it started exits.

Contract: `wait_ready()` returns once ready; it raises StackError as soon as
one of the processes exits or a consumer halts (naming it, with the end of its
log), and, after its timeout, naming what is still not ready. `settle()`
raises StackError if a process or PostgreSQL exits within its seconds.
`readyz()` is one /readyz probe (None: no answer). Starting and stopping are
devstack/stack.py's.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.errors import StackError
from devstack.kafka import KafkaCluster
from devstack.paths import short
from devstack.postgres import PostgresServer
from devstack.processes import ManagedProcess, pid_alive
from devstack.progress import step
from devstack.readiness import ConsumerView, Partition, from_log, from_metrics, partition_names
from shared import events

# How long `up` keeps watching, once everything is ready, that no process it started exits: a process
# that fails on what it meets first (a setting, a port, a record) dies within moments of being ready.
SETTLE_SECONDS = 3.0


def wait_ready(
    procs: Sequence[ManagedProcess],
    consumers: Sequence[tuple[ManagedProcess, int]],
    api_ports: Mapping[str, int],
    kafka: KafkaCluster,
    logs: Path,
    timeout: float,
) -> None:
    """Until every API's /readyz answers 200 and the consumers hold every partition at its stored position.

    `consumers`: those of `procs`, each with its metrics port (Stack.consumers_of); `api_ports`: each
    API's port by process name; `logs`: the directory the errors point to.
    Raises StackError as soon as one of `procs` exits or a consumer halts, and after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    with step("waiting for every /readyz to answer 200 and the consumers to take their partitions"):
        pending = dict(api_ports)
        expected: frozenset[Partition] | None = None
        while True:
            check_running(procs)
            for name, port in list(pending.items()):
                if readyz(port) == 200:
                    del pending[name]
            if expected is None:
                expected = event_partitions(kafka, consumers)
            consumers_lack = consumers_waiting(consumers, expected)
            waiting = [f"{name} (/readyz)" for name in pending] + consumers_lack
            if not waiting:
                return
            if time.monotonic() > deadline:
                late = [p for p in procs if p.name in pending]
                late += [p for p, _ in consumers] if consumers_lack else []
                tails = "".join(f"\nlast lines of {short(p.log_file)}:\n{p.tail(15, True)}" for p in late)
                raise StackError(f"not ready after {timeout:.0f}s: {'; '.join(waiting)}; logs in {short(logs)}{tails}")
            time.sleep(0.2)


def settle(procs: Sequence[ManagedProcess], servers: Sequence[PostgresServer | None], seconds: float) -> None:
    """Watch for `seconds` that none of `procs` (nor PostgreSQL: `servers`, None for one not configured) exits."""
    with step(f"checking for {seconds:.0f}s that every process keeps running"):
        until = time.monotonic() + seconds
        while True:
            check_running(procs)
            for server in servers:
                if server is not None and not _postgres_alive(server):
                    tail = _tail(server.log_file)
                    raise StackError(f"PostgreSQL exited; last lines of {short(server.log_file)}:\n{tail}")
            if time.monotonic() >= until:
                return
            time.sleep(0.2)


def check_running(procs: Sequence[ManagedProcess]) -> None:
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
            f"{p.name} {how} after it was started; last lines of {short(p.log_file)}:\n"
            f"{p.tail(since_start=True)}\n"
            f"The rest of the stack keeps running: fix the cause and run `make up` again (it starts what "
            f"is not running), or `make down`. `make status` shows what runs."
        )


def event_partitions(
    kafka: KafkaCluster, consumers: Sequence[tuple[ManagedProcess, int]]
) -> frozenset[Partition] | None:
    """Every partition of the event topics, as the consumers name them; None while Kafka cannot say."""
    from aiokafka.errors import KafkaError

    if not consumers:
        return frozenset()
    env = {**os.environ, **(consumers[0][0].env or {})}
    prefix = env.get("KAFKA_TOPIC_PREFIX", "")
    topics = [prefix + topic for topic in events.TOPICS]
    try:
        found = frozenset(asyncio.run(kafka.describe(topics)))
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
    consumers: Sequence[tuple[ManagedProcess, int]], expected: frozenset[Partition] | None
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
                f"last lines of {short(p.log_file)}:\n{p.tail(since_start=True)}"
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
