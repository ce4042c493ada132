"""`order resync` / `goods resync`: re-publish entities' current state through the outbox.

Each entity read becomes a `<entity>.resynced` event (a snapshot, see
shared/events.py) in the outbox, which the relay publishes like any other.
An id asked for by `--ids` that the table no longer has (it was deleted) is
published as a snapshot with `exists: false`; an id the table's sequence never
handed out is skipped and reported.

Safe while the service runs: each batch is one statement that reads its rows
and inserts their snapshots (one short transaction), without locking the rows.
A write committed meanwhile publishes its own, newer event, and the consumer
keeps the newer version whichever arrives first. Batches follow the primary
key (`batch_size` rows each), and before each one the command waits while the
outbox holds more than `max_backlog` unpublished events, so `--all` over
millions of rows neither holds one long transaction nor floods the relay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared import progress
from shared.command_service import Entity
from shared.database import WAIT_OUT_ERRORS
from shared.events import GONE_VERSION, MAX_ID
from shared.outbox import BACKLOG_SQL, NOTIFY_CHANNEL, insert_sql

# What ends the command with a message: the database's state, or a stalled relay.
_FAILURES: tuple[type[Exception], ...] = (*WAIT_OUT_ERRORS, RuntimeError)


@dataclass
class Selection:
    """Which entities: `ids`, or those changed at or after `since`, or all (neither)."""

    ids: Sequence[int] | None = None
    since: dt.datetime | None = None


@dataclass
class Outcome:
    published: int = 0  # snapshots of existing entities
    gone: int = 0  # ids the table no longer has: published as `exists: false`
    never_created: list[int] = field(default_factory=list)  # ids beyond the sequence: skipped


def _statements(entity: Entity[Any]) -> tuple[str, str]:
    snapshot = f"{entity.name}.resynced"
    data = {**entity.data, "exists": "true"}
    # $1 the last id of the previous batch, $2 `since` or NULL, $3 the batch size.
    walk = f"""WITH w AS (
        SELECT {entity.columns} FROM {entity.table}
        WHERE id > $1 AND ($2::timestamptz IS NULL OR updated_at >= $2) ORDER BY id LIMIT $3),
     e AS ({insert_sql(snapshot, "w", "w.id", "w.version", data)})
    SELECT count(*) AS n, max(id) AS last FROM w"""
    # $1 the ids. Absent ids at or below the sequence's last value were created once.
    chosen = f"""WITH w AS (SELECT {entity.columns} FROM {entity.table} WHERE id = ANY($1::bigint[])),
     a AS (SELECT x.id FROM unnest($1::bigint[]) AS x(id)
           WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.id = x.id)
             AND x.id <= COALESCE(pg_sequence_last_value('{entity.table}_id_seq'), 0)),
     e AS ({insert_sql(snapshot, "w", "w.id", "w.version", data)}),
     g AS ({insert_sql(snapshot, "a", "a.id", str(GONE_VERSION), {"id": "a.id", "exists": "false"})})
    SELECT (SELECT count(*) FROM w) AS n, (SELECT count(*) FROM a) AS gone,
           array(SELECT x.id FROM unnest($1::bigint[]) AS x(id)
                 WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.id = x.id)
                   AND NOT EXISTS (SELECT 1 FROM a WHERE a.id = x.id)) AS never"""
    return walk, chosen


async def _wait_for_room(conn: asyncpg.Connection[asyncpg.Record], max_backlog: int, stalled_after: float) -> None:
    """Wait while the outbox holds more than `max_backlog` unpublished events; raise if it does not
    shrink for `stalled_after` seconds (no relay publishes)."""
    lowest, since = None, time.monotonic()
    while True:
        row = await conn.fetchrow(BACKLOG_SQL)
        assert row is not None
        backlog: int = row["unpublished"]
        if backlog <= max_backlog:
            return
        if lowest is None or backlog < lowest:
            lowest, since = backlog, time.monotonic()
        elif time.monotonic() - since > stalled_after:
            raise RuntimeError(f"the outbox holds {backlog} unpublished events and no relay publishes them")
        await asyncio.sleep(0.2)


async def resync(
    database_url: str,
    entity: Entity[Any],
    selection: Selection,
    batch_size: int = 1000,
    max_backlog: int = 10000,
    stalled_after: float = 60.0,
) -> Outcome:
    walk, chosen = _statements(entity)
    outcome = Outcome()
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        if selection.ids is not None:
            ids = sorted(set(selection.ids))
            bar = progress.bar(f"{entity.name} resync", total=len(ids), unit=entity.name)
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                await _wait_for_room(conn, max_backlog, stalled_after)
                row = await conn.fetchrow(chosen, chunk)
                assert row is not None
                await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
                outcome.published += row["n"]
                outcome.gone += row["gone"]
                outcome.never_created += row["never"]
                bar.update(len(chunk))
        else:
            total = await conn.fetchval(
                f"SELECT count(*) FROM {entity.table} WHERE $1::timestamptz IS NULL OR updated_at >= $1",
                selection.since,
            )
            bar = progress.bar(f"{entity.name} resync", total=total, unit=entity.name)
            last = 0
            while True:
                await _wait_for_room(conn, max_backlog, stalled_after)
                row = await conn.fetchrow(walk, last, selection.since, batch_size)
                assert row is not None
                if row["n"] == 0:
                    break
                await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
                outcome.published += row["n"]
                last = row["last"]
                bar.update(row["n"])
        bar.close()
    finally:
        await conn.close()
    return outcome


def parse_ids(values: Sequence[str]) -> list[int]:
    """`--ids 1,2,3` (repeatable): positive ids, else ValueError naming the bad one."""
    ids = []
    for value in values:
        for part in value.split(","):
            text = part.strip()
            if not text:
                continue
            if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
                raise ValueError(f"not an id: {text!r}")
            ids.append(int(text))
    if not ids:
        raise ValueError("--ids names no id")
    return ids


def parse_since(value: str) -> dt.datetime:
    """`--since`: an ISO 8601 timestamp with a zone (a naive one is refused: whose midnight?)."""
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"--since needs a zone, e.g. {value}+00:00")
    return moment


async def run(
    service: str,
    database_url: str,
    entity: Entity[Any],
    selection: Selection,
    batch_size: int,
    max_backlog: int,
    stalled_after: float,
) -> int:
    """The console command: the summary line, or a clear error and exit status 1."""
    started = time.monotonic()
    try:
        outcome = await resync(database_url, entity, selection, batch_size, max_backlog, stalled_after)
    except _FAILURES as exc:
        print(f"error: {service} resync failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    parts = [f"resynced {outcome.published} {entity.name}(s)"]
    if outcome.gone:
        parts.append(f"{outcome.gone} deleted (published as exists: false)")
    if outcome.never_created:
        shown = ", ".join(map(str, outcome.never_created[:10]))
        parts.append(f"{len(outcome.never_created)} never created, skipped ({shown})")
    print(f"{'; '.join(parts)} in {time.monotonic() - started:.1f} s")
    return 0
