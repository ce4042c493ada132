"""Transactional outbox, the writing side: the SQL that puts a command's event in the
`outbox` table within the command's own statement. The NOTIFY that wakes the
relay after commits is `shared.notify.Notifier` on NOTIFY_CHANNEL; the relay
that publishes the rows is `shared.command.relay`.
"""

from __future__ import annotations

from shared.events import TOPIC_OF_TYPE, EventType, envelope_sql

NOTIFY_CHANNEL = "outbox"

# The backlog: the relay deletes what it published, so every row is unpublished;
# the oldest by id (ids follow commit order closely enough for an age).
UNPUBLISHED_SQL = "SELECT count(*) FROM outbox"
BACKLOG_SQL = f"""SELECT ({UNPUBLISHED_SQL}) AS unpublished,
       (SELECT extract(epoch FROM now() - created_at)::float8 FROM outbox ORDER BY id LIMIT 1) AS oldest_age"""


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
