"""Transactional outbox, the writing side: the SQL that puts a command's event in the
`outbox` table within the command's own statement, and the NOTIFY that wakes the
relay after commits. The relay that publishes the rows is `shared.relay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from shared.events import TOPIC_OF_TYPE, EventType, envelope_sql

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"

# The backlog, through the partial index of unpublished rows; the oldest by id
# (ids follow commit order closely enough for an age). No scan of the table.
BACKLOG_SQL = """SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished,
       (SELECT extract(epoch FROM now() - created_at)::float8 FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT 1) AS oldest_age"""


def insert_sql(
    event_type: EventType, rows: str, aggregate_id: str, aggregate_version: str, data: dict[str, str]
) -> str:
    """An `INSERT INTO outbox` of one event per row of `rows` (a CTE of the same statement).

    A command puts it in a `WITH` beside its own INSERT/UPDATE/DELETE ... RETURNING,
    so the entity and its event commit together in one statement and one round
    trip; PostgreSQL builds the envelope (`shared.events.envelope_sql`).
    """
    event_id = f"{rows}.outbox_event_id"
    envelope = envelope_sql(event_type, aggregate_id, aggregate_version, data, event_id=event_id)
    # The subquery draws one event id per row (a volatile function keeps it from being flattened).
    return (
        "INSERT INTO outbox (event_id, topic, message_key, payload) "
        f"SELECT {event_id}, '{TOPIC_OF_TYPE[event_type]}', ({aggregate_id})::text, {envelope} "
        f"FROM (SELECT gen_random_uuid() AS outbox_event_id, * FROM {rows}) AS {rows}"
    )


def with_event(write: str, event_type: EventType, aggregate_version: str, data: dict[str, str], columns: str) -> str:
    """One statement: `write` (an INSERT/UPDATE/DELETE ... RETURNING at least `columns`)
    as CTE `w`, the event of each row it wrote, and `columns` of those rows."""
    return (
        f"WITH w AS ({write}),\n"
        f"     e AS ({insert_sql(event_type, 'w', 'w.id', aggregate_version, data)})\n"
        f"SELECT {columns} FROM w"
    )


def delete_with_event(table: str, event_type: EventType, data: dict[str, str], columns: str) -> str:
    """One statement: delete row `id = $1` of `table` (compare-and-set on version when $2 is
    not NULL) with its event, which carries the row's last state one version on,
    `updated_at` being the deletion time; returns `columns` of the deleted row."""
    return with_event(
        f"""DELETE FROM {table} WHERE id = $1 AND ($2::integer IS NULL OR version = $2)
        RETURNING {columns}, now() AS deleted_at""",
        event_type,
        "w.version + 1",
        {**data, "updated_at": "w.deleted_at"},
        columns,
    )


class OutboxNotifier:
    """Wakes the relay after commits, outside the writing transactions.

    `poke()` after a command committed; a background task sends one
    `NOTIFY outbox` for all pokes since the last one, and at most one per
    `min_interval` seconds, so a burst of writes costs a few notifications (each
    one a round trip here and a wake-up of the relay), and no write transaction
    holds PostgreSQL's notify lock through its commit.
    """

    def __init__(self, pool: asyncpg.Pool, min_interval: float = 0.005) -> None:
        self._pool = pool
        self._min_interval = min_interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        self._pending.set()

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._pool.execute(f"NOTIFY {NOTIFY_CHANNEL}")
            except Exception as exc:  # the relay's poll covers a lost wake-up
                log.debug("outbox notify failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(self._min_interval)
