"""How current every order-history answer is, and reads with a bounded staleness (docs/freshness.md).

Per partition the consumer records, in the read database beside its position
(order_history/projection/positions.py): the newest `occurred_at` it applied, and the
latest time it saw the partition's log end at or below its applied position
(`caught_up_at`). Either is an instant before which every event appended to
the partition is in the read model; the later of the two is the partition's
`as_of`. The read model's staleness is now minus the earliest `as_of` of all
partitions of both topics: every event appended to a topic before then is
reflected. A read model that applied everything its topics hold is current
however old its newest event is (idle is not stale): the consumer keeps
marking it caught up.

Each answer carries `Read-Model-Watermark` (per topic, the newest occurred_at
applied from it) and `Read-Model-Staleness` (milliseconds, or `unknown`).
`Prefer: max-staleness=N` asks for an answer at most N ms stale: it waits (as a
Consistency-Token read does, `Prefer: wait`) for the read model to be that
fresh, and answers 503 if it is not in time.

No request reads the freshness from the database: `FreshnessWatch`, one per
API process, reads the group's position rows every REFRESH_INTERVAL while
requests come (from the query database, so on a streaming replica it is the
replica's own state), and each request computes its staleness from that
snapshot and its own clock. A snapshot that is older than the data read after
it only overstates the staleness: the bound holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg
from pydantic import Field

from order_history.projection.positions import PartitionFreshness, Positions
from shared import consistency
from shared.database import UNAVAILABLE_ERRORS
from shared.events import TOPICS
from shared.http.errors import ErrorBody

log = logging.getLogger(__name__)

WATERMARK: Final = "Read-Model-Watermark"
STALENESS: Final = "Read-Model-Staleness"
PREFERENCE_APPLIED: Final = "Preference-Applied"
PREFERENCE: Final = "max-staleness"
UNKNOWN: Final = "unknown"
NONE_YET: Final = "none"
# How often a process reads the positions while requests come, and how long it goes on after the last.
REFRESH_INTERVAL: Final = 0.1
IDLE_AFTER: Final = 10.0

_WATERMARK_HEADER: Final = WATERMARK.lower().encode()
_STALENESS_HEADER: Final = STALENESS.lower().encode()
_APPLIED_HEADER: Final = PREFERENCE_APPLIED.lower().encode()
_UNKNOWN: Final = UNKNOWN.encode()
_LOAD_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)
# `max-staleness=N`, `N` whole or with up to three decimals, in `ms` (the default) or `s`, quoted or not.
_NUMBER: Final = r"[0-9]{1,9}(?:\.[0-9]{1,3})?"
_MAX_STALENESS: Final = re.compile(
    rf'[ \t]*max-staleness[ \t]*=[ \t]*(?:({_NUMBER})(ms|s)?|"({_NUMBER})(ms|s)?")[ \t]*', re.ASCII | re.IGNORECASE
)
_NAME: Final = re.compile(r"[ \t]*([^ \t=;]*)", re.ASCII)

# The documents' patterns of the two headers (RFC 3339 in UTC, microseconds, as the API writes it).
TIME_PATTERN: Final = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
WATERMARK_PATTERN: Final = (
    "^" + ", ".join(rf"{re.escape(topic)}=(?:{TIME_PATTERN}|{NONE_YET})" for topic in TOPICS) + "$"
)
STALENESS_PATTERN: Final = rf"^(?:0|[1-9][0-9]*|{UNKNOWN})$"
APPLIED_PATTERN: Final = r"^max-staleness=(?:0|[1-9][0-9]*)ms$"


def max_staleness_of(prefer: str | None) -> int | None:
    """The bound of `Prefer: max-staleness=N` in milliseconds (fractions of one cut off), or None.

    As RFC 7240 asks, the first `max-staleness` preference is the one considered,
    and one that is malformed is ignored (the read then has no bound); so are
    other preferences and their parameters."""
    for preference in (prefer or "").split(","):
        head = preference.split(";")[0]
        name = _NAME.match(head)
        if name is None or name.group(1).lower() != PREFERENCE:
            continue
        match = _MAX_STALENESS.fullmatch(head)
        if match is None:
            return None
        number, unit = (match.group(1), match.group(2)) if match.group(1) is not None else match.group(3, 4)
        scale = 1000 if (unit or "ms").lower() == "s" else 1
        whole, _, fraction = number.partition(".")
        return (int(whole) * 1000 + int(fraction.ljust(3, "0"))) * scale // 1000
    return None


@dataclass(frozen=True)
class Snapshot:
    """What the position rows said when last read: per topic the newest occurred_at applied, and the
    instant before which every event of both topics is applied (None: unknown)."""

    watermarks: dict[str, dt.datetime | None]
    as_of: dt.datetime | None
    watermark_header: bytes

    def staleness_ms(self, now: float) -> int | None:
        """Milliseconds from `as_of` to `now` (seconds since the epoch), rounded up; None if unknown."""
        if self.as_of is None:
            return None
        return max(0, math.ceil((now - self.as_of.timestamp()) * 1000))

    def headers(self, now: float, applied: int | None = None) -> list[tuple[bytes, bytes]]:
        """The freshness headers of an answer read after this snapshot (`applied`: the bound it met)."""
        ms = self.staleness_ms(now)
        out = [(_WATERMARK_HEADER, self.watermark_header), (_STALENESS_HEADER, _UNKNOWN if ms is None else b"%d" % ms)]
        if applied is not None:
            out.append((_APPLIED_HEADER, b"max-staleness=%dms" % applied))
        return out


def snapshot(partitions: Sequence[PartitionFreshness], topic_prefix: str = "") -> Snapshot:
    """The snapshot of a group's rows (their topics as Kafka names them, with `topic_prefix`).

    Staleness is unknown until every partition has a row that knows its `as_of`:
    with no row for a topic, no consumer has been assigned it yet, and the read
    model may lack all of it. A partition with no event is current once the
    consumer has seen its log end (an empty topic is current).
    """
    by_topic: dict[str, list[PartitionFreshness]] = {topic: [] for topic in TOPICS}
    for p in partitions:
        topic = p.topic.removeprefix(topic_prefix) if p.topic.startswith(topic_prefix) else None
        if topic in by_topic:
            by_topic[topic].append(p)
    watermarks = {
        topic: max((p.newest for p in rows if p.newest is not None), default=None) for topic, rows in by_topic.items()
    }
    instants = [p.as_of for rows in by_topic.values() for p in rows]
    known = all(rows for rows in by_topic.values()) and all(t is not None for t in instants)
    as_of = min(t for t in instants if t is not None) if known else None
    header = ", ".join(f"{topic}={NONE_YET if at is None else _rfc3339(at)}" for topic, at in watermarks.items())
    return Snapshot(watermarks, as_of, header.encode())


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TooStale(Exception):
    """The read model was not as fresh as `Prefer: max-staleness` asks within the wait allowed."""

    def __init__(self, staleness_ms: int | None, bound_ms: int, waited: float, headers: list[tuple[bytes, bytes]]):
        stale = "of unknown staleness" if staleness_ms is None else f"{staleness_ms} ms stale"
        super().__init__(
            f"the read model is {stale}, more than {PREFERENCE}={bound_ms}ms allows, after waiting {waited:g} s; "
            "retry later, or ask for a larger bound"
        )
        self.staleness_ms = staleness_ms
        self.bound_ms = bound_ms
        self.headers = headers
        self.short = f"{PREFERENCE}={bound_ms}ms not met: the read model is {stale}"


class TooStaleBody(ErrorBody):
    """A 503's body: the read model was too stale for `Prefer: max-staleness` (or the database is
    unreachable: then without the two numbers)."""

    staleness_ms: int | None = Field(
        default=None, description="how stale the read model was when the read gave up (null: unknown)"
    )
    max_staleness_ms: int | None = Field(default=None, description="the bound the read asked for")


class FreshnessWatch:
    """The freshness snapshot of one API process (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, group: str, topic_prefix: str) -> None:
        self.pool = pool
        self.positions = Positions(group)
        self.topic_prefix = topic_prefix
        self._snapshot: Snapshot | None = None
        self._loaded_at = -math.inf
        self._used_at = -math.inf
        self._refreshed = asyncio.Event()
        self._loading = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def current(self) -> Snapshot:
        """The latest snapshot; read now only by the first request (or the first after a quiet spell)."""
        self._used_at = time.monotonic()
        found = self._snapshot
        if found is None or self._task is None or self._task.done():
            found = await self._load_once()
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run())
        return found

    async def after(self, instant: float | None) -> Snapshot:
        """A snapshot read after `instant` (time.monotonic()): the one kept if it is, else one read now.
        A read that waited for its Consistency-Token gets one at least as new as what it waited for."""
        if instant is None:
            return await self.current()
        self._used_at = time.monotonic()
        async with self._loading:
            if self._snapshot is not None and self._loaded_at >= instant:
                return self._snapshot
            return await self._load()

    async def fresh(self, bound_ms: int, timeout: float, after: float | None = None) -> tuple[Snapshot, bool]:
        """Wait up to `timeout` seconds for the read model to be at most `bound_ms` stale; the snapshot
        then, and whether it is. `after`: as for `after`."""
        deadline = time.monotonic() + timeout
        found = await self.after(after)
        while not _within(found, bound_ms):
            left = deadline - time.monotonic()
            if left <= 0:
                return found, False
            refreshed = self._refreshed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(refreshed.wait(), left)
            found = await self.current()
        return found, True

    async def _load_once(self) -> Snapshot:
        """Read the rows, unless a request waiting with this one just did."""
        async with self._loading:
            if self._snapshot is not None and time.monotonic() - self._loaded_at < REFRESH_INTERVAL:
                return self._snapshot
            return await self._load()

    async def _load(self) -> Snapshot:
        started = time.monotonic()
        async with self.pool.acquire() as conn:
            rows = await self.positions.freshness(conn)
        self._snapshot = snapshot(rows, self.topic_prefix)
        self._loaded_at = started
        refreshed, self._refreshed = self._refreshed, asyncio.Event()
        refreshed.set()
        return self._snapshot

    async def _run(self) -> None:
        """Read the rows every REFRESH_INTERVAL until no request came for IDLE_AFTER seconds."""
        while time.monotonic() - self._used_at < IDLE_AFTER:
            await asyncio.sleep(REFRESH_INTERVAL)
            try:
                await self._load()
            except _LOAD_ERRORS as exc:
                # The snapshot kept only grows staler with the clock: what requests are told stays true.
                log.debug("cannot read the read model's freshness", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _within(found: Snapshot, bound_ms: int) -> bool:
    ms = found.staleness_ms(time.time())
    return ms is not None and ms <= bound_ms


def openapi_parameters() -> list[dict[str, object]]:
    """The request headers of an order-history read: Consistency-Token, and Prefer with both preferences."""
    token, prefer = consistency.openapi_parameters()
    return [
        token,
        {
            **prefer,
            "description": f"RFC 7240 preferences, comma-separated. `{PREFERENCE}=N`: answer only if the read model "
            "is at most N stale (N: digits, up to three decimals, then `ms` (the default) or `s`, e.g. "
            f"`{PREFERENCE}=500ms`, `{PREFERENCE}=500`, `{PREFERENCE}=1.5s`; quoted too), waiting for it up to the "
            f'wait below, else 503. `wait=N` (N whole seconds, at most six digits; `wait="N"` too): how long a '
            f"read with {consistency.HEADER} or `{PREFERENCE}` may wait (at most {consistency.MAX_WAIT:.0f}; "
            f"default {consistency.DEFAULT_WAIT:.0f}; `wait=0`: answer at once). The first of each counts. Other "
            "preferences, and malformed ones, are ignored as RFC 7240 asks: any value is accepted",
        },
    ]


def openapi_headers(required: bool = True) -> dict[str, object]:
    """The freshness headers of an answer, for the OpenAPI documents."""
    return {
        WATERMARK: {
            "description": "per topic, `occurred_at` of the newest event the read model applied from it (RFC 3339, "
            f"UTC), or `{NONE_YET}`: how far the read model has got. An old watermark with a small staleness is "
            "an idle topic, not a stale one (docs/freshness.md)",
            "required": required,
            "schema": {"type": "string", "pattern": WATERMARK_PATTERN},
        },
        STALENESS: {
            "description": "milliseconds: every event that reached the topics more than this long before the "
            f"answer is reflected in it (`{UNKNOWN}`: no consumer has said yet)",
            "required": required,
            "schema": {"type": "string", "pattern": STALENESS_PATTERN},
        },
    }


def openapi_applied_header() -> dict[str, object]:
    return {
        PREFERENCE_APPLIED: {
            "description": f"`{PREFERENCE}=Nms` when the read asked for a bound and the answer meets it",
            "required": False,
            "schema": {"type": "string", "pattern": APPLIED_PATTERN},
        }
    }
