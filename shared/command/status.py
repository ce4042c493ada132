"""`order status [--json]`, `goods status [--json]`: a command service's outbox and relays.

The outbox backlog (unpublished rows, the oldest one's age) and the relays
connected to the database: which one leads (holds the leader lock) and which
stand by. Read from the service's database as its own role; exits 1 with the
reason when it cannot be reached.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import asyncpg

from shared.command.outbox import BACKLOG_SQL
from shared.command.relay import LEADER_LOCK_KEY
from shared.database import WAIT_OUT_ERRORS
from shared.settings import CommandServiceSettings

# Relays name their sessions `outbox-relay-<service>`; the leader holds the
# advisory lock LEADER_LOCK_KEY (a bigint key is kept as classid = high 32 bits,
# objid = low 32 bits).
_RELAYS = """SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.backend_start,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                 AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid) AS leading
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name = $2
ORDER BY a.backend_start"""


async def gather(service: str, settings: CommandServiceSettings) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        backlog = await conn.fetchrow(BACKLOG_SQL)
        sessions = await conn.fetch(_RELAYS, LEADER_LOCK_KEY, f"outbox-relay-{service}")
    finally:
        await conn.close()
    assert backlog is not None
    # Each relay holds two sessions (the leader lock's and its work's): report the lock's.
    relays = [
        {"pid": r["pid"], "client": r["client"], "since": r["backend_start"].isoformat(), "leading": r["leading"]}
        for r in sessions
        if r["leading"] or not any(o["leading"] for o in sessions if o["client"] == r["client"])
    ]
    return {
        "service": service,
        "outbox_unpublished_events": backlog["unpublished"],
        "outbox_oldest_unpublished_age_seconds": backlog["oldest_age"] or 0.0,
        "relay_leader": next((r for r in relays if r["leading"]), None),
        "relay_sessions": relays,
    }


def render(report: dict[str, Any]) -> str:
    leader = report["relay_leader"]
    lines = [
        f"{report['service']} outbox: {report['outbox_unpublished_events']} unpublished event(s), "
        f"oldest {report['outbox_oldest_unpublished_age_seconds']:.1f} s",
        "relay leader: "
        + ("none" if leader is None else f"pid {leader['pid']} from {leader['client']} since {leader['since']}"),
    ]
    return "\n".join(lines)


async def status(service: str, settings: CommandServiceSettings, as_json: bool) -> int:
    try:
        report = await gather(service, settings)
    except WAIT_OUT_ERRORS as exc:
        print(f"error: cannot read the status of {service}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str) if as_json else render(report))
    return 0
