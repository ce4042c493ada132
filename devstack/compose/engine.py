"""The Docker engine and the compose CLI of `make compose-test`.

The engine is Debian's `dockerd`, started here with a data root, exec root, PID
file and socket of its own (under CACHE), so that it never meets another Docker
on the machine, and stopped by its PID. The compose v2 CLI is built from the Go
module proxy and put where the docker CLI finds plugins (DOCKER_CONFIG), so that
`docker compose` works against this engine only.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from devstack.errors import StackError
from devstack.processes import pid_alive
from devstack.progress import say
from devstack.stack import REPO

CACHE = Path(os.environ.get("COMPOSE_TEST_CACHE") or "/var/tmp/order-history-compose")
COMPOSE_MODULE = "github.com/docker/compose/v5"
COMPOSE_VERSION = "v5.6.0"


def log(message: str) -> None:
    say(message, prefix="compose")


def run_logged(
    argv: Sequence[str],
    what: str,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 1800,
    stdin: IO[bytes] | None = None,
) -> None:
    """Run `argv` to its end with its output in `log_file`; on failure, raise with the log's last lines."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as out:
        done = subprocess.run(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=timeout, stdin=stdin
        )
    if done.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise StackError(f"{what} failed (exit {done.returncode}); last lines of {log_file}:\n{tail}")


def install_system_packages() -> None:
    """docker.io (dockerd, containerd, runc, iptables) and debootstrap, with apt-get when missing."""
    done = subprocess.run(["bash", str(REPO / "devstack" / "install-system.sh"), "--compose"], check=False)
    if done.returncode != 0:
        raise StackError("the system packages of `make compose-test` could not be installed (see above)")


def go_binary() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise StackError(
            f"Go is not installed: it builds the compose CLI ({COMPOSE_MODULE}@{COMPOSE_VERSION}); "
            "install Go 1.24 or newer (Debian bookworm's golang-go is too old)"
        )
    return found


def compose_binary() -> Path:
    """The compose v2 CLI, built once per version from the Go module proxy (`go mod download`, `go build`)."""
    binary = CACHE / "bin" / f"docker-compose-{COMPOSE_VERSION}"
    if binary.exists():
        return binary
    go = go_binary()
    work = CACHE / "build-compose"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    fetched = subprocess.run(
        [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    if fetched.returncode != 0:
        raise StackError(
            f"go mod download {COMPOSE_MODULE}@{COMPOSE_VERSION} failed:\n{fetched.stdout}{fetched.stderr}"
        )
    source = work / "src"
    shutil.copytree(json.loads(fetched.stdout)["Dir"], source)  # the module cache is read-only: a writable copy
    for path in (source, *source.rglob("*")):
        path.chmod(path.stat().st_mode | 0o200)
    version = f"-X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}"
    run_logged(
        [go, "build", "-trimpath", "-ldflags", f"-s -w {version}", "-o", str(work / "docker-compose"), "./cmd"],
        "go build of the compose CLI",
        CACHE / "logs" / "build-compose.log",
        env=env,
        cwd=source,
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    (work / "docker-compose").replace(binary)
    shutil.rmtree(work, ignore_errors=True)
    return binary


class Engine:
    """A `dockerd` of our own: its data root, exec root, PID file and socket are under CACHE."""

    def __init__(self, root: Path = CACHE) -> None:
        self.root = root
        self.data_root = root / "data"
        self.exec_root = root / "exec"
        self.pid_file = root / "dockerd.pid"
        self.socket = root / "docker.sock"
        self.log_file = root / "logs" / "dockerd.log"
        self.config_dir = root / "config"  # DOCKER_CONFIG: the compose plugin, and no user's settings
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def docker(self) -> str:
        # Debian's CLI, of the engine's own version, when it is there.
        return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")

    def env(self) -> dict[str, str]:
        """The environment of a docker CLI that talks to this engine (and the classic builder: no buildx here)."""
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.config_dir),
            "DOCKER_BUILDKIT": "0",
        }

    def install_compose_plugin(self, binary: Path) -> None:
        plugin = self.config_dir / "cli-plugins" / "docker-compose"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        if not plugin.exists() or plugin.read_bytes() != binary.read_bytes():
            shutil.copy2(binary, plugin)

    def lock(self) -> None:
        """One `make compose-test` at a time on this machine: they share the engine's data root."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = (self.root / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another `make compose-test` holds {self.root / 'lock'}; waiting for it")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    def _stale_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid, marker=str(self.data_root)) else None

    def start(self) -> None:
        stale = self._stale_pid()
        if stale is not None:  # left by a run that was killed before it could stop its engine
            log(f"stopping the dockerd a previous run left (pid {stale})")
            self._stop_pid(stale)
        self.release_mounts()  # a killed engine leaves its containers' mounts behind
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        argv = [
            dockerd,
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pid_file}",
            f"--host=unix://{self.socket}",
            # No default bridge (docker0): nothing here uses it, and another engine on the machine
            # may own it. Builds run with --network host; compose makes networks of its own.
            "--bridge=none",
            "--storage-driver=overlay2",
        ]
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
                raise StackError(f"dockerd exited ({self.process.returncode}); last lines of {self.log_file}:\n{tail}")
            probe = subprocess.run([self.docker, "version"], env=self.env(), capture_output=True, check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"dockerd did not answer on {self.socket} within 60 s; see {self.log_file}")
            time.sleep(0.5)
        log(f"dockerd running (pid {self.process.pid}, data root {self.data_root}, socket {self.socket})")

    def stop(self) -> None:
        if self.process is None:
            return
        pid = self.process.pid
        self._stop_pid(pid)
        self.process.wait(timeout=5)
        self.process = None
        self.release_mounts()
        log(f"dockerd stopped (pid {pid})")

    def release_mounts(self) -> None:
        """Unmount what is mounted under the cache once no engine runs on it.

        dockerd keeps its network namespace bound under the exec root after it exits, and one
        killed with its containers running leaves their overlay mounts: either makes the cache
        impossible to delete. Deepest first, lazily, so that a busy mount cannot fail the run.
        """
        prefix = str(self.root.resolve()) + "/"
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            points = [line.split()[4] for line in table]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)

    def _stop_pid(self, pid: int, timeout: float = 60) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            if self.process is not None and self.process.pid == pid and self.process.poll() is not None:
                return
            time.sleep(0.2)
        if pid_alive(pid):
            log(f"dockerd (pid {pid}) did not stop within {timeout:.0f}s: SIGKILL")
            os.kill(pid, signal.SIGKILL)

    def run(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
        """`docker ARGS` against this engine."""
        done = subprocess.run(
            [self.docker, *args], env=self.env(), text=True, capture_output=capture, cwd=REPO, check=False
        )
        if check and done.returncode != 0:
            detail = f":\n{done.stdout}{done.stderr}" if capture else " (see above)"
            raise StackError(f"docker {' '.join(args)} failed (exit {done.returncode}){detail}")
        return done

    def label(self, image: str, name: str) -> str | None:
        """The value of label `name` of a local image, None when there is no such image or label."""
        done = subprocess.run(
            [self.docker, "image", "inspect", "--format", "{{json .Config.Labels}}", image],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return None
        labels = json.loads(done.stdout or "null") or {}
        value = labels.get(name)
        return str(value) if value is not None else None
