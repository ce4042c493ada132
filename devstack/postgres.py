"""A PostgreSQL cluster in a project-local data directory, run as a non-root user."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from devstack.databases import DATABASES, Database, grant_statements, role_statements
from devstack.errors import StackError
from devstack.processes import kill9_tree, port_accepts, port_is_free, run
from devstack.progress import say, step

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres"


def find_bindir() -> Path:
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit)
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with "
        "`apt-get install -y postgresql` (the Makefile does this when run as root), "
        "or set PG_BINDIR to the folder that holds them."
    )


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    log_file: Path
    fast: bool = False  # fsync off: only for throwaway test clusters
    extra_settings: dict[str, str] = field(default_factory=dict)
    # Set: this server is a hot standby streaming from `primary`, made by pg_basebackup on first start.
    primary: PostgresServer | None = None

    def __post_init__(self) -> None:
        self.bindir = find_bindir()
        self.run_as: str | None = None
        # Where the cluster lives instead of data_dir's parent, if it had to move (below).
        self.relocated_to: Path | None = None
        if os.geteuid() == 0:
            self.run_as = os.environ.get("PG_OS_USER", "postgres")
            try:
                pwd.getpwnam(self.run_as)
            except KeyError as exc:
                raise StackError(
                    f"PostgreSQL refuses to run as root and there is no user {self.run_as!r} "
                    "to run it as: install Debian's postgresql package or set PG_OS_USER."
                ) from exc
            if not self._reachable_by_run_as(self.data_dir):
                # The checkout lies where that user cannot go (e.g. under /root): keep the
                # cluster in a place of its own, named after the checkout's path.
                digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
                base = Path("/var/tmp/order-history") / digest
                base.mkdir(parents=True, exist_ok=True)
                base.chmod(0o755)
                say(f"{self.run_as} cannot reach {self.data_dir}; the cluster lives in {base} instead")
                self.data_dir = base / "pgdata"
                self.log_file = base / "postgres.log"
                self.relocated_to = base

    # -- helpers -------------------------------------------------------------
    def _reachable_by_run_as(self, path: Path) -> bool:
        existing = path
        while not existing.exists():
            existing = existing.parent
        check = subprocess.run(
            ["runuser", "-u", str(self.run_as), "--", "test", "-x", str(existing)], capture_output=True, check=False
        )
        return check.returncode == 0

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        if self.run_as is not None:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return argv

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        result = self._status()
        return result == 0

    def _status(self) -> int:
        if not self.initialised():
            return 4
        return subprocess.run(
            self._argv("pg_ctl", "status", "-D", str(self.data_dir)),
            capture_output=True,
        ).returncode

    # -- lifecycle -----------------------------------------------------------
    def init(self) -> None:
        if self.initialised():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        self.data_dir.chmod(0o700)
        if self.primary is not None:
            self._copy_primary(self.primary)
            return
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        self._own(pwfile)
        try:
            with step(f"initialising PostgreSQL cluster in {self.data_dir}"):
                run(
                    self._argv(
                        "initdb",
                        "-D",
                        str(self.data_dir),
                        "-U",
                        SUPERUSER,
                        f"--pwfile={pwfile}",
                        "--auth-local=scram-sha-256",
                        "--auth-host=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ),
                    "initdb",
                )
        finally:
            pwfile.unlink(missing_ok=True)

    def _copy_primary(self, primary: PostgresServer) -> None:
        """A base backup of `primary` that starts as its streaming standby (-R: standby.signal, primary_conninfo)."""
        if not primary.running():
            raise StackError(f"the replica's primary on port {primary.port} is not running")
        with step(f"copying the primary (port {primary.port}) into {self.data_dir} with pg_basebackup"):
            run(
                self._argv(
                    "pg_basebackup",
                    *("-h", "127.0.0.1", "-p", str(primary.port), "-U", SUPERUSER),
                    *("-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast"),
                ),
                "pg_basebackup",
                env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
            )

    def settings(self) -> dict[str, str]:
        values = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "shared_buffers": "512MB",
            "max_locks_per_transaction": "256",
            "timezone": "UTC",
        }
        if self.primary is not None:
            # The primary's vacuum waits for the replica's queries instead of cancelling them.
            values["hot_standby_feedback"] = "on"
        if self.fast:
            values.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        values.update(self.extra_settings)
        return values

    def start(self) -> None:
        self.init()
        if self.running():
            return
        if not port_is_free(self.port):
            raise StackError(
                f"PostgreSQL port {self.port} on 127.0.0.1 is taken by another process; "
                "stop it or choose another port with PG_PORT=..."
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._own(self.log_file)
        options = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}" for k, v in self.settings().items())
        with step(f"starting PostgreSQL on 127.0.0.1:{self.port}"):
            run(
                self._argv(
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                ),
                f"starting PostgreSQL (log: {self.log_file})",
            )
        deadline = time.monotonic() + 30
        while not port_accepts(self.port):
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL did not accept connections; see {self.log_file}")
            time.sleep(0.1)

    def stop(self) -> None:
        if not self.initialised() or not self.running():
            return
        with step("stopping PostgreSQL"):
            run(self._argv("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir)), "pg_ctl stop")

    def kill9(self) -> None:
        """A crash: the postmaster and every backend killed at once (the next start recovers)."""
        pid = self.postmaster_pid()
        if pid is None or not self.running():
            return
        kill9_tree(pid)
        # pg_ctl (and the next postmaster) take the old PID for a live server until
        # its zombie is reaped by whoever inherited it.
        deadline = time.monotonic() + 30
        while self.running():
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL's postmaster {pid} still counts as running after SIGKILL")
            time.sleep(0.05)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- databases -----------------------------------------------------------
    def create_databases(self, databases: Sequence[Database] = DATABASES) -> None:
        asyncio.run(self._create_databases(databases))

    async def _create_databases(self, databases: Sequence[Database]) -> None:
        """Roles, databases and privileges (devstack/databases.py); safe to run on every start."""
        conn = await asyncpg.connect(self.dsn())
        try:
            for db in databases:
                for role in db.roles:
                    exists = bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role.name))
                    for statement in role_statements(role, exists):
                        await conn.execute(statement)
                owner = await conn.fetchval(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", db.name
                )
                if owner is None:
                    say(f"creating database {db.name} owned by {db.owner.name}")
                    await conn.execute(f"CREATE DATABASE {db.name} OWNER {db.owner.name}")
                elif owner != db.owner.name:
                    say(f"database {db.name}: owner {owner} -> {db.owner.name} (its service role only writes now)")
                    await conn.execute(f"ALTER DATABASE {db.name} OWNER TO {db.owner.name}")
                await self._grant(db, moved_from=owner if owner not in (None, db.owner.name) else None)
        finally:
            await conn.close()

    async def _grant(self, db: Database, moved_from: str | None) -> None:
        conn = await asyncpg.connect(self.dsn(db.name))
        try:
            if moved_from is not None:  # the older layout: tables owned by the service role
                await conn.execute(f"REASSIGN OWNED BY {moved_from} TO {db.owner.name}")
            for statement in grant_statements(db):
                await conn.execute(statement)
        finally:
            await conn.close()

    async def recreate_database(self, db: Database) -> None:
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {db.name} OWNER {db.owner.name}")
        finally:
            await conn.close()
        await self._grant(db, moved_from=None)
