"""`order-history dlq list|show|replay|purge|skip`: dead letters and parked records, read, applied again,
removed; and the operator's way out of a stuck partition.

A dead letter is named by its origin, `TOPIC:PARTITION:OFFSET` (the Kafka
topic, e.g. `goods.events:1:42`), and kept in the read database with its
reason, time and raw message (order_history/projection/dead_letters.py); the DLQ topic
keeps its copy, which Kafka cannot delete one by one. A parked record is a
row of the same table that is not on the DLQ topic (`parked`), with what could
be kept of it; the commands treat both alike.

`skip TOPIC PARTITION OFFSET` parks the one record that holds a partition (the
next one to apply, which the consumer keeps failing on) and moves the
partition's position past it, in one transaction that holds the position row,
so a consumer applying that partition meanwhile waits, then goes on after it.
It refuses any other record: skipping is never a way to jump ahead.

`replay` decodes each message again, with the codec of the code now deployed
(new schema versions, upcasters), and applies it as the consumer applies a
part: in one transaction that holds its partition's position row (so no lane
writes that partition's rows meanwhile), by the same projection, with the same
version guards, so an event older than the read model's state changes nothing.
The dead letters that now apply are removed in that transaction; the others
stay, with the reason they fail now.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from order_history.ops.operations import OperationError, log_bounds
from order_history.projection.dead_letters import RECORD, Rejected, identity, row, stand_in
from order_history.projection.positions import Positions
from order_history.projection.statements import apply_prepared, apply_resynced, prepare, reduce_events
from order_history.settings import Settings
from shared import progress
from shared.database import REFUSED_DATA_ERRORS, WAIT_OUT_ERRORS
from shared.events import TOPICS, Codec, PoisonMessage, decode_event
from shared.kafka import KafkaRefused, client_options, start_client

_COLUMNS = (
    'topic, partition, "offset", reason, recorded_at, message_key, message_value, parked, parked_reason, '
    "key_size, value_size, value_sha256"
)
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
    """A row of dead_letters: a dead letter, or (`parked_reason` set) a parked record."""

    origin: Origin
    reason: str
    recorded_at: dt.datetime
    key: bytes | None
    value: bytes | None  # at most KEPT_VALUE_BYTES of it (see `truncated`)
    parked_reason: str | None = None
    value_size: int | None = None
    value_sha256: bytes | None = None

    @classmethod
    def of(cls, row: asyncpg.Record) -> DeadLetter:
        origin = Origin(row["topic"], row["partition"], row["offset"])
        return cls(
            origin,
            row["reason"],
            row["recorded_at"],
            row["message_key"],
            row["message_value"],
            row["parked_reason"] if row["parked"] else None,
            row["value_size"],
            row["value_sha256"],
        )

    @property
    def truncated(self) -> bool:
        """Only the head of the value was kept."""
        return self.value is not None and self.value_size is not None and self.value_size > len(self.value)

    def identity(self) -> dict[str, str]:
        return {} if self.truncated else identity(self.value)

    def summary(self) -> dict[str, Any]:
        return {
            "id": str(self.origin),
            "topic": self.origin.topic,
            "partition": self.origin.partition,
            "offset": self.origin.offset,
            "recorded_at": self.recorded_at.isoformat(),
            "reason": self.reason,
            "parked": self.parked_reason is not None,
            **({"parked_reason": self.parked_reason} if self.parked_reason is not None else {}),
            **self.identity(),
        }

    def whole(self, full: bool = False) -> dict[str, Any]:
        """Everything recorded; the key and value cut at SHOWN characters unless `full`."""
        key, key_cut = _shown(self.key, full)
        value, value_cut = _shown(self.value, full)
        cut = [
            f"{name}: the first {SHOWN} of {n} characters (--full: all)"
            for name, n in (("key", key_cut), ("value", value_cut))
            if n
        ]
        return {
            **self.summary(),
            "key": key,
            "value": value,
            **({"shown": "; ".join(cut)} if cut else {}),
            "value_size": self.value_size,
            "value_truncated": self.truncated,
            "value_sha256": None if self.value_sha256 is None else self.value_sha256.hex(),
        }


# The characters of a key or value `dlq show` prints (a parked value may be a mebibyte).
SHOWN = 4096


def _shown(raw: bytes | None, full: bool) -> tuple[str | None, int]:
    """`raw` as text, and its length if it was cut at SHOWN characters (else 0)."""
    text = _text(raw)
    if text is None or full or len(text) <= SHOWN:
        return text, 0
    return text[:SHOWN] + "...", len(text)


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
    lines = [f"{'ID':<28} {'KIND':<7} {'RECORDED':<20} {'EVENT':<16} REASON"]
    for d in letters:
        event = d.identity().get("event_type", "-")[:16]
        recorded = d.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
        kind = "dlq" if d.parked_reason is None else "parked"
        lines.append(f"{d.origin!s:<28} {kind:<7} {recorded:<20} {event:<16} {d.reason[:100]}")
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
                if letter.truncated:
                    raise PoisonMessage(f"only the first {len(letter.value or b'')} bytes of its value were kept")
                event = decode(letter.value, o.topic.removeprefix(settings.kafka_topic_prefix))
                async with conn.transaction():
                    await positions.lock(conn, [TopicPartition(o.topic, o.partition)])
                    batch = reduce_events([event], [(o.partition, o.offset)])  # its rows: read there
                    await apply_prepared(conn, prepare(batch).upserts_only())
                    if batch.has_resynced:
                        await apply_resynced(conn, batch)
                    await conn.execute(_DELETE, o.topic, o.partition, o.offset)
                outcome.applied.append(o)
            except PoisonMessage as exc:
                outcome.refused.append((o, exc.reason))
            except REFUSED_DATA_ERRORS as exc:
                outcome.refused.append((o, f"database refused the event: {type(exc).__name__}: {exc}"))
            except WAIT_OUT_ERRORS:
                raise
            except Exception as exc:  # as the consumer: a verdict on this record, not the end of the command
                outcome.refused.append((o, f"the consumer failed on it: {type(exc).__name__}: {exc}"[:2000]))
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


_HOLDER = """SELECT next_offset FROM consumer_positions
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE"""
_FIRST_POSITION = """INSERT INTO consumer_positions (consumer_group, topic, partition, next_offset)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"""
_MOVE_POSITION = """UPDATE consumer_positions SET next_offset = $4, updated_at = now()
                    WHERE consumer_group = $1 AND topic = $2 AND partition = $3"""


async def _read_record(settings: Settings, tp: TopicPartition, offset: int) -> tuple[ConsumerRecord, str | None]:
    """The record at `offset` of `tp`; or a stand-in and why its content is unknown."""
    unknown = stand_in(tp.topic, tp.partition, offset)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    try:
        await start_client(consumer, settings)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        async with asyncio.timeout(settings.kafka_request_timeout_ms / 1000):
            while True:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                for message in got.get(tp, []):
                    if message.offset == offset:
                        return message, None
                    return unknown, f"no record at this offset (the next is at {message.offset})"
    except TimeoutError:
        return unknown, "Kafka returned no record at this offset in time"
    except KafkaRefused:
        raise
    except Exception as exc:  # the very record the consumer could not read, perhaps
        return unknown, f"unreadable: {type(exc).__name__}: {exc}"[:2000]
    finally:
        await consumer.stop()


async def skip_record(settings: Settings, topic: str, partition: int, offset: int, note: str | None) -> str:
    """Park the record at `offset` that holds its partition and move the position past it; a summary."""
    kafka_topics = [settings.kafka_topic_prefix + t for t in TOPICS]
    if topic not in kafka_topics and settings.kafka_topic_prefix + topic in kafka_topics:
        topic = settings.kafka_topic_prefix + topic
    if topic not in kafka_topics:
        raise DlqError(f"unknown topic {topic!r}; one of {', '.join(kafka_topics)}")
    tp = TopicPartition(topic, partition)
    try:
        starts, ends = await log_bounds(settings, topic)
    except OperationError as exc:
        raise DlqError(str(exc)) from None
    if tp not in ends:
        raise DlqError(f"{topic} has no partition {partition}")
    message, unknown = await _read_record(settings, tp, offset)
    group = settings.consumer_group
    conn = await _connect(settings)
    try:
        # A consumer applying this partition holds its position row: wait for it a little, not for ever.
        await conn.execute("SET lock_timeout = '10s'")
        async with conn.transaction():
            stored = await conn.fetchval(_HOLDER, group, topic, partition)
            holder = starts[tp] if stored is None else int(stored)
            if offset != holder or offset >= ends[tp]:
                where = f"{topic}[{partition}]"
                if holder >= ends[tp]:
                    raise DlqError(f"{where} holds nothing: every record up to its log end {ends[tp]} is applied")
                raise DlqError(
                    f"{where}: the record holding it is at offset {holder}, not {offset}; skip parks only that one"
                )
            reason = "skipped by an operator" + (f": {note}" if note else "")
            parked = "an operator parked it (order-history dlq skip)" + (f"; {unknown}" if unknown else "")
            await conn.execute(RECORD, *row(message, Rejected(reason), parked))
            if stored is None:
                if await conn.execute(_FIRST_POSITION, group, topic, partition, offset + 1) != "INSERT 0 1":
                    raise DlqError(f"a consumer started on {topic}[{partition}] meanwhile: run skip again")
            else:
                await conn.execute(_MOVE_POSITION, group, topic, partition, offset + 1)
    except asyncpg.LockNotAvailableError:
        raise DlqError(f"a consumer held {topic}[{partition}] for 10 s: run skip again") from None
    finally:
        await conn.close()
    size = "content unknown" if message.value is None and unknown else f"{len(message.value or b'')} bytes"
    return f"parked {topic}:{partition}:{offset} ({size}); {topic}[{partition}] goes on from offset {offset + 1}"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


async def skip(settings: Settings, topic: str, partition: int, offset: int, note: str | None) -> int:
    """The console command `order-history dlq skip`; its exit status."""
    try:
        print(await skip_record(settings, topic, partition, offset, note))
    except DlqError as exc:
        return _fail(str(exc))
    except (KafkaError, KafkaRefused) as exc:
        return _fail(f"cannot read Kafka: {type(exc).__name__}: {exc}")
    except WAIT_OUT_ERRORS as exc:
        return _fail(f"cannot reach the read database: {type(exc).__name__}: {exc}")
    return 0


async def run(
    settings: Settings, action: str, ids: Sequence[str], every: bool, as_json: bool, full: bool = False
) -> int:
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
            shown = [d.whole(full) for d in letters]
            print(json.dumps(shown if len(shown) > 1 else shown[0], indent=2))
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
