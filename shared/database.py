"""asyncpg pools and the errors that mean "the database is not reachable"."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection as handed out by a pool or opened directly.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Errors that say nothing about the request and everything about the database
# or the network: callers retry them or answer 503, never 4xx.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # the role may not log in (now)
    asyncpg.exceptions.InvalidCatalogNameError,  # the database is not there (yet)
)

# Errors after which the whole transaction can simply be run again.
RETRYABLE_ERRORS: tuple[type[Exception], ...] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


async def keep_session(_: asyncpg.Connection[asyncpg.Record]) -> None:
    """A pool `reset` that sends nothing: for code that never changes session state.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL` on every release, one more round trip per request.
    The APIs hold no advisory locks, cursors, LISTENs or SETs (session settings
    are startup parameters, which RESET ALL would keep anyway); asyncpg still
    rolls back a transaction left open before it calls this.
    """


async def create_pool(
    dsn: str, max_size: int = 10, command_timeout: float = 30.0, session_settings: Mapping[str, str] | None = None
) -> asyncpg.Pool:
    """A pool for request handlers, that can be created while the database is down (min_size=0)."""
    settings = {"timezone": "UTC", "application_name": "order-history"}
    settings.update(session_settings or {})
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings=settings,
        reset=keep_session,
    )
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> str | None:
    """None when the database answers, else the reason it does not."""
    try:
        async with asyncio.timeout(timeout):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except TimeoutError:
        return f"database did not answer within {timeout:.0f}s"
    except Exception as exc:  # any failure here is "not ready"
        return f"database unreachable: {type(exc).__name__}: {exc}"
    return None
