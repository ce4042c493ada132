"""`order-history dlq list|show|replay|purge`: the dead letters, read, applied again, removed.

A dead letter is named by its origin, `TOPIC:PARTITION:OFFSET` (the Kafka
topic, e.g. `goods.events:1:42`), and kept in the read database with its
reason, time and raw message (order_history/dead_letters.py); the DLQ topic
keeps its copy, which Kafka cannot delete one by one.

`replay` decodes each message again, with the codec of the code now deployed
(new schema versions, upcasters), and applies it as the consumer applies a
part: in one transaction that holds its partition's position row (so no lane
writes that partition's rows meanwhile), by the same projection, with the same
version guards, so an event older than the read model's state changes nothing.
The dead letters that now apply are removed in that transaction; the others
stay, with the reason they fail now.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import TopicPartition

from order_history.dead_letters import identity
from order_history.positions import Positions
from order_history.projections import apply_prepared, apply_resynced, prepare, reduce_events
from order_history.settings import Settings
from shared import progress
from shared.database import REFUSED_DATA_ERRORS, WAIT_OUT_ERRORS
from shared.events import Codec, PoisonMessage, decode_event

_COLUMNS = 'topic, partition, "offset", reason, recorded_at, message_key, message_value'
_ALL = f'SELECT {_COLUMNS} FROM dead_letters ORDER BY recorded_at, topic, partition, "offset"'
_SOME = f"""SELECT {_COLUMNS} FROM dead_letters d
            JOIN unnest($1::text[], $2::integer[], $3::bigint[]) AS x(t, p, o)
              ON d.topic = x.t AND d.partition = x.p AND d."offset" = x.o
            ORDER BY recorded_at, topic, partition, "offset\""""
_DELETE = 'DELETE FROM dead_letters WHERE topic = $1 AND partition = $2 AND "offset" = $3'
_REASON = 'UPDATE dead_letters SET reason = $4 WHERE topic = $1 AND partition = $2 AND "offset" = $3'


class DlqError(Exception):
    """A request the command refuses; the message says why."""


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> Origin:
        topic, sep, rest = text.rpartition(":")
        topic, sep2, partition = topic.rpartition(":")
        if not sep or not sep2 or not topic or not partition.isdigit() or not rest.isdigit():
            raise DlqError(f"not a dead letter id: {text!r} (expected TOPIC:PARTITION:OFFSET)")
        return cls(topic, int(partition), int(rest))

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class DeadLetter:
    origin: Origin
    reason: str
    recorded_at: dt.datetime
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> DeadLetter:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        return cls(origin, row["reason"], row["recorded_at"], row["message_key"], row["message_value"])

    def identity(self) -> dict[str, str]:
        return identity(self.value)

    def summary(self) -> dict[str, Any]:
        return {
            "id": str(self.origin),
            "topic": self.origin.topic,
            "partition": self.origin.partition,
            "offset": self.origin.offset,
            "recorded_at": self.recorded_at.isoformat(),
            "reason": self.reason,
            **self.identity(),
        }

    def whole(self) -> dict[str, Any]:
        return {**self.summary(), "key": _text(self.key), "value": _text(self.value)}


def _text(raw: bytes | None) -> str | None:
    """A message's bytes as text if they are UTF-8, else as `base64:...`."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


async def _connect(settings: Settings) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(settings.database_url, timeout=10, server_settings={"timezone": "UTC"})


async def _load(conn: asyncpg.Connection[asyncpg.Record], ids: Sequence[Origin] | None) -> list[DeadLetter]:
    if ids is None:
        return [DeadLetter.of(r) for r in await conn.fetch(_ALL)]
    rows = await conn.fetch(_SOME, [o.topic for o in ids], [o.partition for o in ids], [o.offset for o in ids])
    found = [DeadLetter.of(r) for r in rows]
    missing = set(ids) - {d.origin for d in found}
    if missing:
        raise DlqError(f"no such dead letter: {', '.join(sorted(map(str, missing)))}")
    return found


async def _read(settings: Settings, ids: Sequence[Origin] | None) -> list[DeadLetter]:
    conn = await _connect(settings)
    try:
        return await _load(conn, ids)
    finally:
        await conn.close()


def _table(letters: Sequence[DeadLetter]) -> str:
    lines = [f"{'ID':<28} {'RECORDED':<20} {'EVENT':<16} REASON"]
    for d in letters:
        event = d.identity().get("event_type", "-")
        recorded = d.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{d.origin!s:<28} {recorded:<20} {event:<16} {d.reason[:100]}")
    return "\n".join(lines)


@dataclass
class ReplayOutcome:
    applied: list[Origin]
    refused: list[tuple[Origin, str]]


async def replay_letters(settings: Settings, ids: Sequence[Origin] | None, codec: Codec | None = None) -> ReplayOutcome:
    """Decode and apply the dead letters `ids` (None: all); remove those that apply."""
    decode = decode_event if codec is None else codec.decode
    positions = Positions(settings.consumer_group)
    outcome = ReplayOutcome([], [])
    conn = await _connect(settings)
    try:
        letters = await _load(conn, ids)
        bar = progress.bar("dlq replay", total=len(letters), unit="event")
        for letter in letters:
            o = letter.origin
            try:
                if letter.value is None:
                    raise PoisonMessage("the message was recorded without its value (before migration 0007)")
                event = decode(letter.value, o.topic.removeprefix(settings.kafka_topic_prefix))
                async with conn.transaction():
                    await positions.lock(conn, [TopicPartition(o.topic, o.partition)])
                    batch = reduce_events([event])
                    await apply_prepared(conn, prepare(batch).upserts_only())
                    if batch.has_resynced:
                        await apply_resynced(conn, batch)
                    await conn.execute(_DELETE, o.topic, o.partition, o.offset)
                outcome.applied.append(o)
            except PoisonMessage as exc:
                outcome.refused.append((o, exc.reason))
            except REFUSED_DATA_ERRORS as exc:
                outcome.refused.append((o, f"database refused the event: {type(exc).__name__}: {exc}"))
            bar.update(1)
        bar.close()
        for origin, reason in outcome.refused:
            await conn.execute(_REASON, origin.topic, origin.partition, origin.offset, reason)
    finally:
        await conn.close()
    return outcome


async def purge_letters(settings: Settings, ids: Sequence[Origin] | None) -> int:
    conn = await _connect(settings)
    try:
        async with conn.transaction():
            letters = await _load(conn, ids)
            for letter in letters:
                o = letter.origin
                await conn.execute(_DELETE, o.topic, o.partition, o.offset)
    finally:
        await conn.close()
    return len(letters)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


async def run(settings: Settings, action: str, ids: Sequence[str], every: bool, as_json: bool) -> int:
    """The console command `order-history dlq ACTION`; its exit status."""
    try:
        origins = None if every or action == "list" else [Origin.parse(i) for i in ids]
        if action in ("replay", "purge") and not every and not origins:
            raise DlqError(f"dlq {action} needs dead letter ids or --all")
        if action == "list":
            letters = await _read(settings, None)
            if as_json:
                print(json.dumps([d.summary() for d in letters], indent=2))
            else:
                print(_table(letters))
                print(f"{len(letters)} dead letter(s)")
        elif action == "show":
            letters = await _read(settings, origins)
            print(json.dumps([d.whole() for d in letters] if len(letters) > 1 else letters[0].whole(), indent=2))
        elif action == "replay":
            result = await replay_letters(settings, origins)
            for origin, reason in result.refused:
                print(f"{origin}: still refused: {reason}", file=sys.stderr)
            total = len(result.applied) + len(result.refused)
            print(
                f"replayed {total} dead letter(s): {len(result.applied)} applied and removed, "
                f"{len(result.refused)} still refused"
            )
            return 1 if result.refused else 0
        else:
            print(f"purged {await purge_letters(settings, origins)} dead letter(s)")
    except DlqError as exc:
        return _fail(str(exc))
    except WAIT_OUT_ERRORS as exc:
        return _fail(f"cannot reach the read database: {type(exc).__name__}: {exc}")
    return 0
