"""Processes started by the stack, tracked by PID files (never by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.errors import StackError

# What `state` says of a process (and `devstack status` prints).
RUNNING = "running"
EXITED = "not running (exited)"
STOPPED = "not running (stopped)"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int, marker: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        return False
    if marker is None:
        return True
    # A process that has just been started may show an empty command line for a
    # moment while it execs (seen in about 1 start of 20): look again before
    # deciding it is not ours. A kernel thread's stays empty.
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        if cmdline:
            return marker.encode() in cmdline
        time.sleep(0.002)
    return False


@dataclass
class ManagedProcess:
    """A background process with a PID file and a log file."""

    name: str
    argv: Sequence[str]
    pid_file: Path
    log_file: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # The child this object started, if it did: whether it still runs is then
    # known exactly, without reading /proc.
    _child: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def marker(self) -> str:
        # A string of the command line that identifies this process: a recycled
        # PID that runs something else is not ours.
        return " ".join(self.argv[-2:])

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid, self.marker) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        existing = self.pid()
        if existing is not None:
            return existing
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        # Where this run's lines begin in a log that earlier runs wrote to: `log_since_start`.
        log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.log_file, "ab") as log:
            try:
                proc = subprocess.Popen(
                    list(self.argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=str(self.cwd) if self.cwd else None,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise StackError(f"{self.name}: cannot run {self.argv[0]!r}: {exc}") from exc
        self._child = proc
        self.pid_file.write_text(f"{proc.pid}\n{self.marker}\n{log_start}\n")
        return proc.pid

    def exited_early(self) -> bool:
        """True if start() ran but the process is gone."""
        if self._child is not None:
            return self._child.poll() is not None
        return self.pid_file.exists() and self.pid() is None

    def state(self) -> str:
        """RUNNING; EXITED if it died on its own (`stop` removes the PID file, a death leaves it); else STOPPED."""
        if self.running():
            return RUNNING
        return EXITED if self.pid_file.exists() else STOPPED

    def log_since_start(self) -> str:
        """What the process now running (or last started) wrote to its log, not what earlier runs did."""
        try:
            start = int(self.pid_file.read_text().splitlines()[2])
        except (OSError, ValueError, IndexError):
            start = 0  # a PID file of an older devstack: the whole log
        try:
            with open(self.log_file, "rb") as log:
                if start <= log.seek(0, os.SEEK_END):
                    log.seek(start)
                else:  # the log was truncated since
                    log.seek(0)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
        """Signal the process and wait up to `timeout` for it to exit, then SIGKILL it.

        True if it exited within `timeout` (or was not running).
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return True
        if sig == signal.SIGKILL:
            _kill_group(pid, sig)  # no chance to stop its children (API workers) itself
        else:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
        exited = not pid_alive(pid)
        if not exited:
            _kill_group(pid, signal.SIGKILL)
            while pid_alive(pid):
                _reap(pid)
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return exited

    def signal(self, sig: int) -> None:
        """Send `sig` (SIGSTOP, SIGCONT, ...) to the process, if it runs."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, sig)

    def exit_status(self) -> int | None:
        """The exit status of a process this object started, once it has exited."""
        return None if self._child is None else self._child.poll()

    def kill9(self) -> None:
        self.stop(timeout=0.0, sig=signal.SIGKILL)

    def tail(self, lines: int = 30, since_start: bool = False) -> str:
        """The log's last `lines`; with `since_start`, only of what the current (or last) run wrote."""
        if since_start:
            return "\n".join(self.log_since_start().splitlines()[-lines:]) or "(nothing in its log)"
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_by_pid_file(pid_file: Path, timeout: float = 15.0) -> None:
    """Stop the process a PID file names, if it still runs the command recorded there."""
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return
    if len(lines) < 2:
        pid_file.unlink(missing_ok=True)
        return
    marker = lines[1]
    proc = ManagedProcess(name=pid_file.stem, argv=[marker], pid_file=pid_file, log_file=pid_file)
    proc.stop(timeout=timeout)


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(stat.parent.name))
    return out


def kill9_tree(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL a process and its children at once (a server and its workers), and wait until they are gone."""
    victims = [pid, *children_of(pid)]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(pid_alive(v) for v in victims):
        for victim in victims:
            _reap(victim)
        if time.monotonic() > deadline:
            raise StackError(f"processes {victims} did not die after SIGKILL")
        time.sleep(0.05)


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process and the children in its process group (it leads one: start_new_session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def run(argv: Sequence[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {argv[0]!r} is not installed ({exc})") from exc
    if result.returncode != 0:
        raise StackError(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result  # type: ignore[no-any-return]
