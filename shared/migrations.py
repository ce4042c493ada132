"""A small migration runner: ordered SQL files, each applied once in its own transaction.

Why not alembic/yoyo: the services speak plain SQL through asyncpg, with no
SQLAlchemy models to autogenerate from; this runner is ~60 lines, records what it
applied in `schema_migrations`, takes an advisory lock so that concurrent starts
are safe, and refuses a migration file whose content changed after it was applied.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_ROOT = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 0x6F726465  # any constant: serialises concurrent runners on one database


class MigrationError(RuntimeError):
    pass


def migration_files(service: str, root: Path = MIGRATIONS_ROOT) -> list[Path]:
    folder = root / service
    if not folder.is_dir():
        raise MigrationError(f"no migrations folder {folder}")
    return sorted(folder.glob("*.sql"))


async def migrate(dsn: str, service: str, root: Path = MIGRATIONS_ROOT, schema: str | None = None) -> list[str]:
    """Apply pending migrations of `service`; return the names applied now.

    `schema`: into that schema (its own `schema_migrations` too) instead of the role's search_path."""
    applied_now: list[str] = []
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema} if schema else None)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for path in migration_files(service, root):
            sql = path.read_text()
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if path.name in done:
                if done[path.name] != checksum:
                    raise MigrationError(f"{path} changed after it was applied; add a new migration instead")
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", path.name, checksum
                )
            log.info("applied migration", extra={"migration": path.name, "service": service})
            applied_now.append(path.name)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied_now
