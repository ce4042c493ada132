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

from devstack.databases import init_sql
from devstack.stack import REPO, Stack, StackConfig

COMPOSE_FILE = REPO / "docker-compose.yml"
POSTGRES_INIT = REPO / "docker" / "postgres-init.sql"

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


@functools.cache
def load_compose() -> dict[str, Any]:
    """The file as compose sees it (`docker-compose config`), or as PyYAML reads it without the binary.

    Cached: callers must not change what it returns.
    """
    binary = compose_binary()
    if binary is None:
        text = COMPOSE_FILE.read_text()
    else:
        result = run_compose(binary, "config")
        assert result.returncode == 0, result.stderr
        text = result.stdout
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def local_env() -> dict[str, str]:
    return Stack(StackConfig()).service_env()


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
    from devstack.kafka import TOPICS

    text = COMPOSE_FILE.read_text()
    match = re.search(r"for topic in ([^;]+);", text)
    assert match is not None, "docker-compose.yml has no `for topic in ...;` loop"
    assert match.group(1).split() == list(TOPICS)
