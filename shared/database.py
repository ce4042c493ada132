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
    # asyncpg lost track of a session the server ended mid-operation (terminated,
    # or crashed): the connection is dropped and a new one opened.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # the role may not log in (now)
    asyncpg.exceptions.InvalidCatalogNameError,  # the database is not there (yet)
    # The database takes no sessions now (ALLOW_CONNECTIONS false while an
    # operator works on it), or an object is in a passing state (a lock not available).
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
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


class BoundedPool(asyncpg.Pool):
    """A pool whose `acquire()` waits at most `acquire_timeout` seconds for a connection
    (then TimeoutError, which is UNAVAILABLE: a request answers 503 instead of queueing forever)."""

    acquire_timeout: float = 5.0

    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy[asyncpg.Record]:
        # asyncpg bounds an acquire with wait_for, a task per call: on the APIs'
        # every request. A timeout scope bounds it the same without one
        # (docs/benchmarks.md, "Hardening and metrics").
        async with asyncio.timeout(self.acquire_timeout if timeout is None else timeout):
            proxy: PoolConnectionProxy[asyncpg.Record] = await super()._acquire(None)  # type: ignore[misc]
            return proxy


async def create_pool(
    dsn: str,
    max_size: int = 10,
    *,
    min_size: int = 0,
    command_timeout: float = 30.0,
    acquire_timeout: float = 5.0,
    session_settings: Mapping[str, str] | None = None,
    reset: bool = False,
) -> BoundedPool:
    """A pool that can be created while the database is down (min_size=0 by default).

    `reset=False`: connections go back to the pool without asyncpg's reset query
    (see keep_session), for code that never changes session state.
    """
    settings = {"timezone": "UTC", "application_name": "order-history"}
    settings.update(session_settings or {})
    pool = BoundedPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=command_timeout,
        timeout=10,
        server_settings=settings,
        reset=None if reset else keep_session,
    )
    pool.acquire_timeout = acquire_timeout
    await pool
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
