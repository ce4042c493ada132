"""The stand-in images of `make compose-test` (docker/standins/): one for every image the compose
file and the Dockerfile name, of the major version named, and the Kafka stand-in's KAFKA_* convention.

Nothing here needs a Docker engine: the compose stage of CI runs the images.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from devstack.compose.images import BASE_IMAGE, PROJECT_IMAGE, STANDINS, STANDINS_DIR
from devstack.kafka import KafkaCluster
from devstack.paths import REPO
from tests.unit.test_compose import env_of, load_compose

CONFIGURE = STANDINS_DIR / "kafka" / "docker" / "configure"


def from_images(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)


def test_every_image_the_stack_runs_has_a_stand_in() -> None:
    """So that `make compose-test` never needs an image registry."""
    built = {tag for tag, _ in STANDINS.values()} | {BASE_IMAGE, PROJECT_IMAGE}
    for cluster in (False, True):
        named = {svc["image"] for svc in load_compose(cluster)["services"].values()}
        assert named <= built, f"no stand-in for {sorted(named - built)}"
    assert set(from_images(REPO / "Dockerfile")) <= built
    for name in STANDINS:
        assert from_images(STANDINS_DIR / name / "Dockerfile") == [BASE_IMAGE], name


def test_the_stand_ins_install_the_major_versions_their_tags_name() -> None:
    postgres = (STANDINS_DIR / "postgres" / "Dockerfile").read_text()
    assert STANDINS["postgres"][0] == "postgres:15" and "ENV PG_MAJOR=15" in postgres
    assert '"postgresql-$PG_MAJOR"' in postgres
    pom = (STANDINS_DIR / "kafka" / "pom.xml").read_text()
    assert STANDINS["kafka"][0] == "apache/kafka:4.1.1" and "<kafka.version>4.1.1</kafka.version>" in pom
    # Debian bookworm's python3 is CPython 3.11.
    assert STANDINS["python"][0] == "python:3.11-slim" and BASE_IMAGE == "debian:bookworm"


def configure(env: dict[str, str], tmp_path: Path, shared: str | None = None) -> dict[str, str]:
    """Run the Kafka stand-in's `configure` with `env`; the server.properties it writes."""
    config, shared_dir = tmp_path / "config", tmp_path / "shared"
    config.mkdir()
    shared_dir.mkdir()
    if shared is not None:
        (shared_dir / "server.properties").write_text(shared)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", str(CONFIGURE)],
        env={
            "PATH": os.environ["PATH"],
            "STANDIN_CONFIG_DIR": str(config),
            "STANDIN_SHARED_CONFIG_DIR": str(shared_dir),
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (config / "server.properties").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.mark.parametrize("cluster", [False, True], ids=["one node", "cluster profile"])
def test_kafka_variables_become_the_local_brokers_settings(cluster: bool, tmp_path: Path) -> None:
    """What the compose file's KAFKA_* variables turn into in the stand-in: devstack's broker settings."""
    services = load_compose(cluster)["services"]
    env = env_of(services["kafka"])
    props = configure(env, tmp_path)
    count = 3 if cluster else 1
    settings = KafkaCluster.on_ports(REPO / "unused", REPO / "unused", [(9092, 9093)] * count).broker_settings()
    settings.pop("controller.quorum.voters")
    for key, value in settings.items():
        assert props.get(key) == value, key
    assert props["node.id"] == "1" and props["advertised.listeners"] == "PLAINTEXT://kafka:9092"
    assert props["log.dirs"] == "/var/lib/kafka/data"
    assert "heap.opts" not in props and not any(k.startswith("kafka") for k in props)


def test_kafka_configure_follows_the_official_images_rules(tmp_path: Path) -> None:
    props = configure(
        {
            "CLUSTER_ID": "x",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
            "KAFKA_LISTENER_NAME_SASL__SSL_X": "a",  # __ -> _
            "KAFKA_SOME___DASHED_NAME": "b",  # ___ -> -
            "KAFKA_OPTS": "-Dnot=a-property",
        },
        tmp_path,
        shared="num.network.threads=5\n",
    )
    # The image's defaults fill in what is not set (they come before KAFKA_LISTENERS would be derived).
    assert (
        props["listeners"] == "PLAINTEXT://localhost:29092,CONTROLLER://localhost:29093,PLAINTEXT_HOST://0.0.0.0:9092"
    )
    assert props["listener.name.sasl_ssl.x"] == "a" and props["some-dashed.name"] == "b"
    assert props["num.network.threads"] == "5"  # the file given, with the variables after it
    assert props["node.id"] == "1" and props["log.dirs"] == "/tmp/kraft-combined-logs"
    assert "opts" not in props
