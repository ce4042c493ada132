"""docker-compose.yml: valid for the real compose parser, and in step with the local stack.

The app containers must get the environment variables that `make up` gives its
processes (devstack/stack.py `Stack.service_env()`), under the same names, with
container addresses. Nothing here needs a Docker engine, PostgreSQL or Kafka.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.config import StackConfig
from devstack.databases import init_sql
from devstack.kafka import KafkaCluster
from devstack.paths import REPO
from devstack.stack import Stack

COMPOSE_FILE = REPO / "docker-compose.yml"
POSTGRES_INIT = REPO / "docker" / "postgres-init.sql"
CLUSTER_ENV = REPO / "docker" / "cluster.env"

# Set on an app container without being in service_env(): both are read by shared/settings.py.
EXTRA_ALLOWED = frozenset({"KAFKA_TOPIC_PREFIX", "LOG_LEVEL"})

# service -> the modules it runs with `python -m`, and the port its API listens on (None: no API).
APP_SERVICES: dict[str, tuple[set[str], int | None]] = {
    "migrate": ({"order", "goods", "order_history"}, None),
    "order-api": ({"order"}, 8080),
    "goods-api": ({"goods"}, 8081),
    "order-history-api": ({"order_history"}, 8082),
    "order-relay": ({"order"}, None),
    "goods-relay": ({"goods"}, None),
    "order-history-consumer": ({"order_history"}, None),
}
MODULES = ("order", "goods", "order_history")


def compose_binary() -> str | None:
    found = shutil.which("docker-compose")
    if found is None and os.environ.get("CI"):
        pytest.fail("docker-compose is not installed, and in CI it must be (`make test` installs it)")
    return found


def run_compose(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@functools.cache
def load_compose(cluster: bool = False) -> dict[str, Any]:
    """The file as compose sees it (`docker-compose config`; with `cluster`, with docker/cluster.env),
    or as PyYAML reads it after the same ${NAME:-default} substitution, without the binary.

    Cached: callers must not change what it returns.
    """
    binary = compose_binary()
    if binary is None:
        values = env_file(CLUSTER_ENV) if cluster else {}
        text = re.sub(r"(?<!\$)\$\{(\w+):-([^}]*)\}", lambda m: values.get(m[1], m[2]), COMPOSE_FILE.read_text())
    else:
        result = run_compose(binary, *(["--env-file", str(CLUSTER_ENV)] if cluster else []), "config")
        assert result.returncode == 0, result.stderr
        text = result.stdout
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def local_env(cluster: bool = False) -> dict[str, str]:
    """`make up`'s environment; with `cluster`, `make up KAFKA_BROKERS=3 PG_REPLICA=1`'s."""
    config = StackConfig(kafka_brokers=3, pg_replica_port=5433) if cluster else StackConfig()
    return Stack(config).service_env()


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):  # the `- NAME=value` form
        return {name: value for name, _, value in (str(item).partition("=") for item in raw)}
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def modules_run(service: Mapping[str, Any]) -> set[str]:
    command = service.get("command") or []
    text = command if isinstance(command, str) else " ".join(str(part) for part in command)
    return set(re.findall(r"python -m (\w+)", text))


def env_problems(services: Mapping[str, Any], local: Mapping[str, str]) -> list[str]:
    """What is wrong with the app containers' environment; empty when nothing is."""
    problems: list[str] = []
    allowed = set(local) | EXTRA_ALLOWED
    app = {name: svc for name, svc in services.items() if "build" in svc}
    if set(app) != set(APP_SERVICES):
        problems.append(f"app services (with `build`) are {sorted(app)}, expected {sorted(APP_SERVICES)}")
    set_somewhere: set[str] = set()
    for name, svc in sorted(app.items()):
        env = env_of(svc)
        set_somewhere |= set(env)
        for unknown in sorted(set(env) - allowed):
            problems.append(f"{name}: {unknown} is not a variable of the local stack (Stack.service_env())")
        modules = modules_run(svc)
        expected_modules, port = APP_SERVICES.get(name, (modules, None))
        if modules != expected_modules:
            problems.append(f"{name}: runs python -m {sorted(modules)}, expected {sorted(expected_modules)}")
        # Every variable except the *_HOST/*_PORT of the services this container does not run.
        not_run = {f"{m.upper()}_{what}" for m in MODULES if m not in modules for what in ("HOST", "PORT")}
        for missing in sorted(set(local) - not_run - set(env)):
            problems.append(f"{name}: {missing} is not set")
        if port is not None:
            (module,) = modules
            prefix = module.upper()
            if env.get(f"{prefix}_HOST") != "0.0.0.0":
                problems.append(
                    f"{name}: {prefix}_HOST must be 0.0.0.0 in a container, is {env.get(f'{prefix}_HOST')!r}"
                )
            if env.get(f"{prefix}_PORT") != str(port):
                problems.append(f"{name}: {prefix}_PORT must be {port}, is {env.get(f'{prefix}_PORT')!r}")
    for missing in sorted(set(local) - set_somewhere):
        problems.append(f"{missing} is set on no app service")
    return problems


def test_compose_config_is_valid() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose is not installed (CI is not set)")
    result = run_compose(binary, "config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_app_env_names_match_the_local_stack() -> None:
    services = load_compose()["services"]
    assert env_problems(services, local_env()) == []


def test_env_check_can_fail() -> None:
    broken = copy.deepcopy(load_compose()["services"])
    env = env_of(broken["order-api"])
    env["ORDER_DB_URL"] = env.pop("ORDER_DATABASE_URL")
    env["ORDER_HOST"] = "127.0.0.1"
    broken["order-api"]["environment"] = env
    del broken["goods-relay"]
    problems = env_problems(broken, local_env())
    assert any("ORDER_DB_URL is not a variable" in p for p in problems), problems
    assert any("order-api: ORDER_DATABASE_URL is not set" in p for p in problems), problems
    assert any("ORDER_HOST must be 0.0.0.0" in p for p in problems), problems
    assert any("app services" in p for p in problems), problems


def test_database_urls_point_at_the_compose_postgres() -> None:
    services = load_compose()["services"]
    local = local_env()
    for name in APP_SERVICES:
        env = env_of(services[name])
        for key in (k for k in local if k.endswith("_DATABASE_URL")):
            expected = local[key].replace("@127.0.0.1:5432/", "@postgres:5432/")
            assert env.get(key) == expected, f"{name}: {key}"


def test_postgres_init_creates_the_local_roles_databases_and_privileges() -> None:
    assert POSTGRES_INIT.read_text() == init_sql(), "regenerate it: python -m devstack init-sql > " + str(POSTGRES_INIT)
    mounts = load_compose()["services"]["postgres"].get("volumes") or []
    specs = [m if isinstance(m, str) else f"{m.get('source')}:{m.get('target')}" for m in mounts]
    assert any(
        Path(spec.split(":")[0]).name == POSTGRES_INIT.name and ":/docker-entrypoint-initdb.d/" in spec
        for spec in specs
    ), mounts


def test_compose_creates_the_topics_of_the_event_catalogue() -> None:
    """The topic-creating container names exactly the dev stack's topics (the catalogue's and their DLQs)."""
    from devstack.kafka_topics import TOPICS

    text = COMPOSE_FILE.read_text()
    match = re.search(r"for topic in ([^;]+);", text)
    assert match is not None, "docker-compose.yml has no `for topic in ...;` loop"
    assert match.group(1).split() == list(TOPICS)


def kafka_nodes(services: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    return {name: env_of(svc) for name, svc in services.items() if str(svc.get("image", "")).startswith("apache/kafka")
            and "KAFKA_NODE_ID" in env_of(svc)}  # fmt: skip


def in_profile(service: Mapping[str, Any]) -> bool:
    return "cluster" in (service.get("profiles") or [])


def test_cluster_profile_is_the_local_three_node_stack_with_a_replica() -> None:
    services = load_compose(cluster=True)["services"]
    local = local_env(cluster=True)
    assert env_problems(services, local) == []
    nodes = kafka_nodes(services)
    assert sorted(nodes) == ["kafka", "kafka-2", "kafka-3"]
    assert sorted(int(env["KAFKA_NODE_ID"]) for env in nodes.values()) == [1, 2, 3]
    voters = {f"{env['KAFKA_NODE_ID']}@{name}:9093" for name, env in nodes.items()}
    bootstrap = {f"{name}:9092" for name in nodes}
    for name, env in nodes.items():
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters, name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092", name
    for name in APP_SERVICES:
        env = env_of(services[name])
        assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == bootstrap, name
        assert len(local["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == len(bootstrap)
        for key in (k for k in local if k.endswith("_DATABASE_URL")):
            expected = local[key].replace("@127.0.0.1:5432/", "@postgres:5432/")
            expected = expected.replace("@127.0.0.1:5433/", "@postgres-replica:5432/")
            assert env.get(key) == expected, f"{name}: {key}"
    assert "@postgres-replica:5432/" in env_of(services["order-history-api"])["ORDER_HISTORY_QUERY_DATABASE_URL"]
    replica = services["postgres-replica"]
    assert "pg_basebackup -h postgres " in " ".join(replica["command"]) and in_profile(replica)
    assert any("postgres-replication.sh" in str(m) for m in services["postgres"]["volumes"])


@pytest.mark.parametrize("cluster", [False, True], ids=["one node", "cluster profile"])
def test_kafka_nodes_have_the_local_brokers_settings(cluster: bool) -> None:
    """Every broker setting devstack gives its nodes (replication factor and min.insync.replicas included),
    as the apache/kafka image's KAFKA_* variables, with the same values."""
    services = load_compose(cluster)["services"]
    count = 3 if cluster else 1
    ports = [(9092 + 2 * i, 9093 + 2 * i) for i in range(count)]
    settings = KafkaCluster.on_ports(REPO / "unused", REPO / "unused", ports).broker_settings()
    settings.pop("controller.quorum.voters")  # addresses differ: checked above
    active = {n: env for n, env in kafka_nodes(services).items() if cluster or not in_profile(services[n])}
    assert len(active) == count
    for name, env in active.items():
        for key, value in settings.items():
            assert env.get("KAFKA_" + key.upper().replace(".", "_")) == value, f"{name}: {key}"


def test_only_the_cluster_profile_starts_the_extra_nodes_and_the_replica() -> None:
    services = load_compose()["services"]
    extra = {name for name, svc in services.items() if in_profile(svc)}
    assert extra == {"kafka-2", "kafka-3", "postgres-replica"}
    assert "COMPOSE_PROFILES" in env_file(CLUSTER_ENV) and env_file(CLUSTER_ENV)["COMPOSE_PROFILES"] == "cluster"
