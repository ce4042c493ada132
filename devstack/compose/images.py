"""The images docker-compose.yml runs, built here from package registries only.

- `debian:bookworm`: `debootstrap --variant=minbase bookworm`, `docker import`,
  and docker/standins/debian/ on it (the official image's container settings);
- the stand-ins of docker/standins/ on it: `python:3.11-slim`, `postgres:15`,
  `apache/kafka:4.1.1` (with the Kafka jars from Maven Central);
- `order-history:local` from the project's `Dockerfile`, with the wheels of its
  dependencies downloaded on this machine (`pip wheel`) into .devstack/wheels/,
  which the Dockerfile installs from when they are there.

Each image carries the hash of its inputs in the label KEY_LABEL and is rebuilt
only when that hash changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from devstack.compose.engine import CACHE, Engine, log, run_logged
from devstack.errors import StackError
from devstack.progress import step
from devstack.stack import REPO

STANDINS_DIR = REPO / "docker" / "standins"
KEY_LABEL = "org.order-history.standin.key"
WHAT_LABEL = "org.order-history.standin"
PROJECT_IMAGE = "order-history:local"
WHEELS_IN_CONTEXT = REPO / ".devstack" / "wheels"

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# The debootstrap tree as it comes; docker/standins/debian/ makes debian:bookworm of it.
DEBOOTSTRAP_IMAGE = f"order-history/debootstrap:{SUITE}"
BASE_IMAGE = f"debian:{SUITE}"
# Bump when what base_tarball() does changes.
DEBOOTSTRAP_RECIPE = 2

STANDINS: dict[str, tuple[str, str]] = {
    # directory of docker/standins/ -> (tag, what it is)
    "python": ("python:3.11-slim", "CPython 3.11 and pip from Debian bookworm's packages"),
    "postgres": ("postgres:15", "PostgreSQL 15 from Debian bookworm's packages"),
    "kafka": ("apache/kafka:4.1.1", "Apache Kafka 4.1.1 jars from Maven Central on Debian's OpenJDK 17"),
}


def digest(*parts: str | Path) -> str:
    """A hash of strings and of files (a directory: every file in it, by relative path, mode and content)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
                h.update(str(f.stat().st_mode & 0o111).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def fresh(engine: Engine, image: str, key: str) -> bool:
    return engine.label(image, KEY_LABEL) == key


# -- debian:bookworm -------------------------------------------------------------
def base_tarball(key: str) -> Path:
    """`debootstrap --variant=minbase bookworm` as a tarball, made once per key (about a minute)."""
    tarball = CACHE / f"debootstrap-{SUITE}-minbase-{key[:12]}.tar"
    if tarball.exists():
        return tarball
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    with step(f"debootstrap --variant=minbase {SUITE} (first run only)", prefix="compose"):
        run_logged(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR],
            "debootstrap",
            CACHE / "logs" / "debootstrap.log",
        )
    # What an image must not carry: the downloaded packages and lists, the host's name and resolver.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)
    partial = tarball.with_suffix(".partial")
    run_logged(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
        "tar of the debootstrap tree",
        CACHE / "logs" / "tar.log",
    )
    partial.replace(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    for old in CACHE.glob("debootstrap-*.tar"):
        if old != tarball:
            old.unlink()
    return tarball


def base_image(engine: Engine) -> str:
    """debian:bookworm: the debootstrap tree imported, then docker/standins/debian/ on it; its key."""
    raw_key = digest(f"recipe {DEBOOTSTRAP_RECIPE}", SUITE, MIRROR)
    if not fresh(engine, DEBOOTSTRAP_IMAGE, raw_key):
        tarball = base_tarball(raw_key)
        with step(f"docker import {DEBOOTSTRAP_IMAGE}", prefix="compose"), tarball.open("rb") as data:
            run_logged(
                [
                    engine.docker,
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    'CMD ["bash"]',
                    "--change",
                    f"LABEL {KEY_LABEL}={raw_key}",
                    "-",
                    DEBOOTSTRAP_IMAGE,
                ],
                f"docker import {DEBOOTSTRAP_IMAGE}",
                CACHE / "logs" / "import.log",
                env=engine.env(),
                stdin=data,
            )
    key = digest(raw_key, STANDINS_DIR / "debian")
    if fresh(engine, BASE_IMAGE, key):
        log(f"{BASE_IMAGE}: up to date")
    else:
        build(engine, BASE_IMAGE, STANDINS_DIR / "debian", key, f"debootstrap --variant=minbase {SUITE}")
    return key


# -- the stand-ins ---------------------------------------------------------------
def kafka_libs() -> Path:
    """The jars of docker/standins/kafka/pom.xml, once per version of the pom."""
    pom = STANDINS_DIR / "kafka" / "pom.xml"
    libs = CACHE / f"kafka-libs-{digest(pom)[:12]}"
    if (libs / ".complete").exists():
        return libs
    shutil.rmtree(libs, ignore_errors=True)
    with step("mvn dependency:copy-dependencies (the Kafka image's jars)", prefix="compose"):
        run_logged(
            ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
            "mvn dependency:copy-dependencies (Kafka image)",
            CACHE / "logs" / "mvn-kafka.log",
        )
    (libs / ".complete").write_text("")
    return libs


def build(engine: Engine, tag: str, context: Path, key: str | None, what: str, dockerfile: Path | None = None) -> None:
    """`docker build` (classic builder; host network: no default bridge here); a stand-in with its labels."""
    name = tag.replace("/", "-").replace(":", "-")
    labels = [] if key is None else ["--label", f"{KEY_LABEL}={key}", "--label", f"{WHAT_LABEL}={what}"]
    with step(f"docker build {tag}", prefix="compose"):
        run_logged(
            [
                engine.docker,
                "build",
                "--network=host",
                "--force-rm",  # no container left behind by a step that fails
                *labels,
                *(["-f", str(dockerfile)] if dockerfile else []),
                "-t",
                tag,
                str(context),
            ],
            f"docker build {tag} ({what})",
            CACHE / "logs" / f"build-{name}.log",
            env=engine.env(),
        )


def standin(engine: Engine, name: str, base: str, libs: Path | None = None) -> None:
    tag, what = STANDINS[name]
    source = STANDINS_DIR / name
    key = digest(base, source, *([f"libs {libs.name}"] if libs else []))
    if fresh(engine, tag, key):
        log(f"{tag}: up to date (stand-in: {what})")
        return
    context = source
    if libs is not None:  # the jars join the directory's files in a context of their own
        context = CACHE / f"context-{name}"
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(source, context, symlinks=True)
        shutil.copytree(libs, context / "libs", ignore=shutil.ignore_patterns(".complete"))
    build(engine, tag, context, key, what)
    if libs is not None:
        shutil.rmtree(context, ignore_errors=True)


# -- the project's image -----------------------------------------------------------
def requirements() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [*pyproject["build-system"]["requires"], *pyproject["project"]["dependencies"]]


def wheels() -> Path:
    """Wheels of the project's dependencies and build backend (`pip wheel`, on this machine: the
    image's Python is the same 3.11 on the same Debian), copied into the build context."""
    reqs = requirements()
    cached = CACHE / f"wheels-{digest(json.dumps(reqs), sys.version.split()[0])[:12]}"
    if not (cached / ".complete").exists():
        shutil.rmtree(cached, ignore_errors=True)
        with step("pip wheel (the image's Python packages)", prefix="compose"):
            run_logged(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(cached), *reqs],
                "pip wheel",
                CACHE / "logs" / "pip-wheel.log",
            )
        (cached / ".complete").write_text("")
    shutil.rmtree(WHEELS_IN_CONTEXT, ignore_errors=True)
    shutil.copytree(cached, WHEELS_IN_CONTEXT, ignore=shutil.ignore_patterns(".complete"))
    return WHEELS_IN_CONTEXT


def project_image(engine: Engine) -> None:
    """`order-history:local` from the Dockerfile, every run (the engine's layer cache makes it quick)."""
    build(engine, PROJECT_IMAGE, REPO, None, "the project's Dockerfile", dockerfile=REPO / "Dockerfile")


def build_all(engine: Engine, prepared: Iterable[Future[Path]]) -> None:
    """The base image, then the three stand-ins side by side (the project's image after Python's).

    `prepared`: the Kafka jars and the wheels, fetched meanwhile (in that order).
    """
    libs_future, wheels_future = prepared
    base = base_image(engine)

    def python_then_project() -> None:
        standin(engine, "python", base)
        wheels_future.result()
        project_image(engine)

    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [
            pool.submit(python_then_project),
            pool.submit(standin, engine, "postgres", base),
            pool.submit(lambda: standin(engine, "kafka", base, libs_future.result())),
        ]
        errors = [job.exception() for job in jobs]
    failed = [e for e in errors if e is not None]
    if failed:
        raise StackError("\n\n".join(str(e) for e in failed))


def image_summary(engine: Engine) -> str:
    tags = [BASE_IMAGE, *(tag for tag, _ in STANDINS.values()), PROJECT_IMAGE]
    done = subprocess.run(
        [engine.docker, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}\t{{.Size}}"],
        env=engine.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    wanted = set(tags)
    return "\n".join(line for line in done.stdout.splitlines() if line.split("\t")[0] in wanted)
