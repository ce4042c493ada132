"""`order resync` / `goods resync`: re-publish entities' current state through the outbox.

Each entity read becomes a `<entity>.resynced` event (a snapshot, see
shared/events.py) in the outbox, which the relay publishes like any other.
An id asked for by `--ids` that the table no longer has, at or below the
sequence's last value, was deleted (or its insert rolled back): ids are never
handed out twice, so it is published as a snapshot with `exists: false` at
GONE_VERSION, deleted for good. An id beyond the sequence was not handed out
by this database, yet the sequence will hand it out later (after a restore
from backup it hands out again ids it had used). Such an id is skipped and
reported, unless `remove_unassigned` names a version (`order-history reconcile
--repair` passes the highest version the read model holds among the rows it
removes): it is then published as removed at that version (or at the id's
floor, if one is higher), and the same transaction records that version as the
id's floor (`version_floors`), above which the entity the sequence later hands
the id to starts. The read model's version guard then lets that entity in, and
keeps out every copy of the removed row's events (docs/commands.md, "reconcile").

Safe while the service runs: each batch is one statement that reads its rows
and inserts their snapshots (one short transaction), without locking the rows.
A write committed meanwhile publishes its own, newer event, and the consumer
keeps the newer version whichever arrives first. Batches follow the primary
key (`batch_size` rows each), and before each one the command waits while the
outbox holds more than `max_backlog` unpublished events, so `--all` over
millions of rows neither holds one long transaction nor floods the relay.
A batch that removes ids beyond the sequence first locks the table against
writes (SHARE) for its short transaction: an insert that draws one of those
ids has then either committed before the batch reads the sequence (the id is
handed out, not removed), or starts its statement after the batch committed,
and sees the floor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared import progress
from shared.command.outbox import BACKLOG_SQL, NOTIFY_CHANNEL, insert_sql
from shared.command.service import Entity
from shared.database import WAIT_OUT_ERRORS
from shared.events import GONE_VERSION, MAX_ID, MAX_VERSION

# What ends the command with a message: the database's state, or a stalled relay.
_FAILURES: tuple[type[Exception], ...] = (*WAIT_OUT_ERRORS, RuntimeError)


@dataclass
class Selection:
    """Which entities: `ids`, or those changed at or after `since`, or all (neither).

    `remove_unassigned`, with `ids` only: the version at which ids beyond the
    sequence are published as removed (None: they are skipped).
    """

    ids: Sequence[int] | None = None
    since: dt.datetime | None = None
    remove_unassigned: int | None = None


@dataclass
class Outcome:
    published: int = 0  # snapshots of existing entities
    gone: int = 0  # ids the table no longer has: published as `exists: false`, deleted for good
    removed: int = 0  # ids beyond the sequence, published as removed (with `remove_unassigned`)
    never_created: list[int] = field(default_factory=list)  # ids beyond the sequence: skipped
    # With `ids`: the version of the snapshot published for each id, so that a caller
    # (reconcile --repair) knows what it can wait for.
    snapshots: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "resynced": self.published,
            "deleted": self.gone,
            "removed": self.removed,
            "never_created": self.never_created,
            "snapshots": {str(k): v for k, v in sorted(self.snapshots.items())},
        }


def parse_removal_version(text: str) -> int:
    """`--remove-unassigned`: a version the entity created later can still go one above."""
    if not text.strip().isdigit() or not 1 <= int(text) < MAX_VERSION:
        raise ValueError(f"--remove-unassigned needs a version from 1 to {MAX_VERSION - 1}, not {text!r}")
    return int(text)


def _statements(entity: Entity[Any]) -> tuple[str, str]:
    snapshot = f"{entity.name}.resynced"
    data = {**entity.data, "exists": "true"}
    # $1 the last id of the previous batch, $2 `since` or NULL, $3 the batch size.
    walk = f"""WITH w AS (
        SELECT {entity.columns} FROM {entity.table}
        WHERE id > $1 AND ($2::timestamptz IS NULL OR updated_at >= $2) ORDER BY id LIMIT $3),
     e AS ({insert_sql(snapshot, "w", "w.id", "w.version", data)})
    SELECT count(*) AS n, max(id) AS last FROM w"""
    # $1 the ids, $2 the removal version or NULL. Absent ids at or below the sequence's
    # last value were handed out once (a: gone); those beyond it were not (r: removed
    # at a version that is also their floor, never below a floor recorded before).
    gone = {"id": "a.id", "exists": "false"}
    removed = {"id": "r.id", "exists": "false"}
    chosen = f"""WITH w AS (SELECT {entity.columns} FROM {entity.table} WHERE id = ANY($1::bigint[])),
     s AS (SELECT COALESCE(pg_sequence_last_value('{entity.table}_id_seq'), 0) AS last),
     x AS (SELECT x.id, x.id <= s.last AS assigned FROM unnest($1::bigint[]) AS x(id), s
           WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.id = x.id)),
     a AS (SELECT id FROM x WHERE assigned),
     r AS (SELECT x.id, GREATEST($2::integer, f.version) AS version
           FROM x LEFT JOIN version_floors f USING (id) WHERE NOT x.assigned AND $2::integer IS NOT NULL),
     fl AS (INSERT INTO version_floors AS f (id, version) SELECT id, version FROM r
           ON CONFLICT (id) DO UPDATE SET version = GREATEST(f.version, EXCLUDED.version)),
     e AS ({insert_sql(snapshot, "w", "w.id", "w.version", data)}),
     g AS ({insert_sql(snapshot, "a", "a.id", str(GONE_VERSION), gone)}),
     d AS ({insert_sql(snapshot, "r", "r.id", "r.version", removed)}),
     p AS (SELECT COALESCE(array_agg(id), '{{}}') AS ids, COALESCE(array_agg(version), '{{}}') AS versions
           FROM (SELECT id, version FROM w UNION ALL SELECT id, {GONE_VERSION} FROM a
                 UNION ALL SELECT id, version FROM r) AS published)
    SELECT (SELECT count(*) FROM w) AS n, (SELECT count(*) FROM a) AS gone, (SELECT count(*) FROM r) AS removed,
           array(SELECT id FROM x WHERE NOT assigned AND $2::integer IS NULL ORDER BY id) AS never,
           p.ids, p.versions
    FROM p"""
    return walk, chosen


def _sequence_sql(entity: Entity[Any]) -> str:
    return f"SELECT COALESCE(pg_sequence_last_value('{entity.table}_id_seq'), 0)"


async def _chosen(
    conn: asyncpg.Connection[asyncpg.Record], entity: Entity[Any], sql: str, chunk: list[int], removal: int | None
) -> asyncpg.Record:
    """One batch of `--ids`, in one transaction; locked against inserts only when it removes ids."""
    async with conn.transaction():
        if removal is not None and chunk[-1] > await conn.fetchval(_sequence_sql(entity)):
            # The sequence only grows, so without an id beyond it no insert can race the floors.
            await conn.execute(f"LOCK TABLE {entity.table} IN SHARE MODE")
        row = await conn.fetchrow(sql, chunk, removal)
    assert row is not None
    return row


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
                done = await _chosen(conn, entity, chosen, chunk, selection.remove_unassigned)
                await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
                outcome.published += done["n"]
                outcome.gone += done["gone"]
                outcome.removed += done["removed"]
                outcome.never_created += done["never"]
                outcome.snapshots.update(zip(done["ids"], done["versions"], strict=True))
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
    as_json: bool = False,
) -> int:
    """The console command: the summary line (or JSON), or a clear error and exit status 1."""
    started = time.monotonic()
    try:
        outcome = await resync(database_url, entity, selection, batch_size, max_backlog, stalled_after)
    except _FAILURES as exc:
        print(f"error: {service} resync failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({**outcome.as_dict(), "seconds": round(time.monotonic() - started, 3)}))
        return 0
    parts = [f"resynced {outcome.published} {entity.name}(s)"]
    if outcome.gone:
        parts.append(f"{outcome.gone} deleted (published as exists: false)")
    if outcome.removed:
        parts.append(f"{outcome.removed} beyond the sequence, published as removed")
    if outcome.never_created:
        shown = ", ".join(map(str, outcome.never_created[:10]))
        parts.append(f"{len(outcome.never_created)} never created, skipped ({shown})")
    print(f"{'; '.join(parts)} in {time.monotonic() - started:.1f} s")
    return 0
