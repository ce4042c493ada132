"""asyncpg pools and the errors that mean "the database is not reachable"."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection as handed out by a pool or opened directly.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# The one classification of database errors, used by the APIs, the relays and
# the consumer alike.
#
# UNAVAILABLE_ERRORS say nothing about the request and everything about the
# database or the network (TimeoutError is an OSError): the APIs answer 503,
# the background processes wait them out.
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
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout, or cancelled by an operator
    asyncpg.exceptions.IdleSessionTimeoutError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)

# The database refusing the data itself (SQLSTATE classes 22 and 23): running
# the same statement again fails the same way. The consumer dead-letters the
# event that causes it.
REFUSED_DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)

# What a background process waits out (after REFUSED_DATA_ERRORS where data is
# involved): any other database error is the database's state (down, no login,
# no permission, a deadlock...), never a reason to skip or drop work.
WAIT_OUT_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.exceptions.PostgresError)


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
