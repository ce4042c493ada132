"""The three databases and their roles: who owns, who writes, who only reads.

Least privilege: each database is owned by an owner role that runs its
migrations (and the read model's reset); the service runs as a role that can
only read and write the rows of that database's tables; a reader role can
only read them (the order-history API queries as one; `order-history
reconcile` reads the command databases as theirs). Every service role has a
server-side `statement_timeout` and `idle_in_transaction_session_timeout`.
Passwords equal role names: local development only.

`provision_statements` is the one source of these facts: devstack runs it on
every start (idempotent, and it moves a database of the older layout, owned
by its service role, to its owner), and docker/postgres-init.sql is written
from it (`python -m devstack init-sql`; a unit test keeps the two equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    name: str
    statement_timeout: str | None = None
    idle_in_transaction_timeout: str | None = None

    @property
    def password(self) -> str:
        return self.name

    def url(self, database: str, port: int, host: str = "127.0.0.1") -> str:
        return f"postgresql://{self.name}:{self.password}@{host}:{port}/{database}"

    def settings(self) -> list[tuple[str, str]]:
        out = []
        if self.statement_timeout:
            out.append(("statement_timeout", self.statement_timeout))
        if self.idle_in_transaction_timeout:
            out.append(("idle_in_transaction_session_timeout", self.idle_in_transaction_timeout))
        return out


@dataclass(frozen=True)
class Database:
    name: str
    service: str  # the settings prefix of the service that owns it: ORDER_, GOODS_, ORDER_HISTORY_
    owner: Role
    writer: Role
    reader: Role

    @property
    def roles(self) -> tuple[Role, Role, Role]:
        return (self.owner, self.writer, self.reader)


def _database(name: str, service: str, prefix: str, write_timeout: str) -> Database:
    return Database(
        name=name,
        service=service,
        owner=Role(f"{prefix}_owner", idle_in_transaction_timeout="10min"),
        writer=Role(f"{prefix}_svc", statement_timeout=write_timeout, idle_in_transaction_timeout="60s"),
        reader=Role(f"{prefix}_reader", statement_timeout="30s", idle_in_transaction_timeout="60s"),
    )


# The consumer's batch statements are larger than any request's: a longer statement timeout.
DATABASES: tuple[Database, ...] = (
    _database("orders", "ORDER", "order", "30s"),
    _database("goods", "GOODS", "goods", "30s"),
    _database("order_history", "ORDER_HISTORY", "order_history", "60s"),
)


def role_statements(role: Role, exists: bool) -> list[str]:
    verb = "ALTER" if exists else "CREATE"
    out = [f"{verb} ROLE {role.name} LOGIN PASSWORD '{role.password}'"]
    out += [f"ALTER ROLE {role.name} SET {key} = '{value}'" for key, value in role.settings()]
    return out


def grant_statements(db: Database) -> list[str]:
    """Run in the database, as a superuser: the privileges of its three roles (idempotent)."""
    owner, writer, reader = db.owner.name, db.writer.name, db.reader.name
    tables = "SELECT, INSERT, UPDATE, DELETE"
    return [
        f"REVOKE ALL ON DATABASE {db.name} FROM PUBLIC",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {db.name} TO {writer}, {reader}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {writer}, {reader}",
        f"GRANT {tables} ON ALL TABLES IN SCHEMA public TO {writer}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {writer}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT {tables} ON TABLES TO {writer}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {writer}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader}",
    ]


def init_sql() -> str:
    """docker/postgres-init.sql: the same roles, databases and privileges, for psql on an empty cluster."""
    lines = [
        "-- Run once by the official postgres image on an empty data directory",
        "-- (/docker-entrypoint-initdb.d). Written by `python -m devstack init-sql` from",
        "-- devstack/databases.py, which devstack itself runs: do not edit by hand.",
    ]
    for db in DATABASES:
        lines.append("")
        lines += [f"{s};" for role in db.roles for s in role_statements(role, exists=False)]
        lines.append(f"CREATE DATABASE {db.name} OWNER {db.owner.name};")
        lines.append(f"\\connect {db.name}")
        lines += [f"{s};" for s in grant_statements(db)]
        lines.append("\\connect postgres")
    return "\n".join(lines) + "\n"
