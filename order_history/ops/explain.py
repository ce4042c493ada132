"""`order-history explain ORDER_ID [--json] [--goods-limit N]`: one order's read-model row, explained.

For the order and each of its live goods: the read model's row, its version
and the command side's, where the event that last changed it was read (topic,
partition and offset: columns.SOURCE, none for a placeholder or for a row not
written since migration 0014), and whether the command databases agree. The
comparison is reconcile's own (`Reconciler.compare_ids`, ops/reconciler.py, through the same
reader roles and the API's role for the read model) over the order and every
goods item either side says is in it, so a goods item the read model lacks, or
still counts in the order, shows too. Then the dead letters and parked records
(`dead_letters`) of the order and of those goods: by the entity and order each
names (migration 0014), whatever their key or value held.

The databases are read one after another, not in one snapshot: a change still
on its way through the pipeline shows as a difference; run it again.

Exit 0: the read model has the order (whether or not the sides agree: the
report says); 1: a database cannot be read; 2: usage; 3 (NOT_FOUND): the read
model has no row for the order (the message says whether its service has it,
and names its dead letters).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from order_history.ops.checks import Difference
from order_history.ops.reconciler import Reconciler
from order_history.projection.columns import GOODS, ORDERS, Entity
from order_history.settings import Settings
from shared.database import WAIT_OUT_ERRORS
from shared.events import GOODS_TOPIC, MAX_ID, ORDER_TOPIC

NOT_FOUND: Final = 3
DEAD_LETTERS_SHOWN: Final = 100

_ORDER: Final = "SELECT * FROM orders WHERE id = $1"
_GOODS_IDS: Final = "SELECT id FROM goods WHERE order_id = $1 AND NOT deleted ORDER BY id"
_GOODS: Final = "SELECT * FROM goods WHERE order_id = $1 AND NOT deleted ORDER BY id LIMIT $2"
_COMMAND_GOODS_IDS: Final = "SELECT id FROM goods WHERE order_id = $1"
_DEAD_LETTERS: Final = """SELECT topic, partition, "offset", reason, parked, parked_reason, recorded_at,
                                 entity_id, order_id, count(*) OVER () AS total
                          FROM dead_letters
                          WHERE order_id = $1 OR (topic = $2 AND entity_id = $1)
                             OR (topic = $3 AND entity_id = ANY($4::bigint[]))
                          ORDER BY recorded_at, topic, partition, "offset"
                          LIMIT $5"""


def order_id(text: str) -> int:
    """An argparse `type`: an order id (a positive 64-bit integer), else a usage error naming it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an order id: {text!r}") from None
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"not an order id (1 to 2^63-1): {text!r}")
    return value


def _value(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.datetime) else v


@dataclass
class Explained:
    """One read-model row, explained."""

    entity: Entity
    topic: str  # the Kafka topic its events come from
    row: dict[str, Any]
    command_version: int | None  # None: its service does not have it
    differences: list[Difference] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.row["id"])

    @property
    def version(self) -> int:
        return int(self.row["version"])

    @property
    def source(self) -> dict[str, Any] | None:
        partition, offset = (self.row.get(name) for name in self.entity.record)
        if partition is None or offset is None:
            return None
        return {"topic": self.topic, "partition": partition, "offset": offset}

    @property
    def agrees(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        shown = {k: _value(v) for k, v in self.row.items() if k not in ("id", "version", *self.entity.record)}
        return {
            "id": self.id,
            "version": self.version,
            "command_version": self.command_version,
            "source": self.source,
            "agrees": self.agrees,
            "differences": [d.as_dict() for d in self.differences],
            "row": shown,
        }


@dataclass
class DeadLetterRow:
    topic: str
    partition: int
    offset: int
    reason: str
    parked_reason: str | None
    recorded_at: dt.datetime
    entity_id: int | None
    order_id: int | None

    @property
    def id(self) -> str:
        """As `order-history dlq` names it."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "parked": self.parked_reason is not None,
            "reason": self.reason,
            "parked_reason": self.parked_reason,
            "recorded_at": self.recorded_at.isoformat(),
            "entity_id": self.entity_id,
            "order_id": self.order_id,
        }


@dataclass
class Explanation:
    order_id: int
    order: Explained | None  # None: the read model has no row for it
    order_command_version: int | None
    goods: list[Explained] = field(default_factory=list)  # the first `limit` live goods, by id
    goods_total: int = 0  # live goods of the order in the read model
    other_differences: list[Difference] = field(default_factory=list)  # of goods not shown
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    dead_letters_total: int = 0

    @property
    def differences(self) -> int:
        shown = sum(len(e.differences) for e in ([self.order] if self.order else []) + self.goods)
        return shown + len(self.other_differences)

    @property
    def agrees(self) -> bool:
        return self.differences == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "found": self.order is not None,
            "agrees": None if self.order is None else self.agrees,
            "differences": self.differences,
            "order": None if self.order is None else self.order.as_dict(),
            "order_command_version": self.order_command_version,
            "goods": [g.as_dict() for g in self.goods],
            "goods_total": self.goods_total,
            "goods_not_shown": self.goods_total - len(self.goods),
            "other_differences": [d.as_dict() for d in self.other_differences],
            "dead_letters": [d.as_dict() for d in self.dead_letters],
            "dead_letters_total": self.dead_letters_total,
        }


def _by_row(found: Iterable[Difference]) -> dict[tuple[str, int], list[Difference]]:
    out: dict[tuple[str, int], list[Difference]] = {}
    for d in found:
        out.setdefault((d.entity, d.id), []).append(d)
    return out


async def gather(settings: Settings, order_id: int, goods_limit: int) -> Explanation:
    """Read the order's rows from the read model and the command databases; no output."""
    order_topic = settings.kafka_topic_prefix + ORDER_TOPIC
    goods_topic = settings.kafka_topic_prefix + GOODS_TOPIC
    async with Reconciler(settings) as reconciler:
        read, command_goods = reconciler.conns["read"], reconciler.conns["goods"]
        order_row = await read.fetchrow(_ORDER, order_id)
        read_ids = [r["id"] for r in await read.fetch(_GOODS_IDS, order_id)]
        goods_rows = await read.fetch(_GOODS, order_id, goods_limit) if goods_limit and read_ids else []
        command_ids = [r["id"] for r in await command_goods.fetch(_COMMAND_GOODS_IDS, order_id)]
        every_goods = sorted(set(read_ids) | set(command_ids))
        found = _by_row(await reconciler.compare_ids([order_id], every_goods)) if order_row else {}
        order_version = (await reconciler.versions("command", "order", [order_id])).get(order_id)
        shown_ids = [r["id"] for r in goods_rows]
        goods_versions = await reconciler.versions("command", "goods", shown_ids) if shown_ids else {}
        letters = await read.fetch(_DEAD_LETTERS, order_id, order_topic, goods_topic, every_goods, DEAD_LETTERS_SHOWN)
    report = Explanation(order_id, None, order_version, goods_total=len(read_ids))
    if order_row is not None:
        order_differences = found.pop(("order", order_id), [])
        report.order = Explained(ORDERS, order_topic, dict(order_row), order_version, order_differences)
        for r in goods_rows:
            gid = r["id"]
            report.goods.append(
                Explained(GOODS, goods_topic, dict(r), goods_versions.get(gid), found.pop(("goods", gid), []))
            )
        report.other_differences = [d for key in sorted(found) for d in found[key]]
    report.dead_letters = [
        DeadLetterRow(
            r["topic"],
            r["partition"],
            r["offset"],
            r["reason"],
            r["parked_reason"] if r["parked"] else None,
            r["recorded_at"],
            r["entity_id"],
            r["order_id"],
        )
        for r in letters
    ]
    report.dead_letters_total = letters[0]["total"] if letters else 0
    return report


# -- rendering ------------------------------------------------------------------
def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(_value(value))


def _where(e: Explained) -> str:
    source = e.source
    if source is None:
        return "no source recorded (a placeholder, or not changed since migration 0014)"
    return f"{source['topic']} partition {source['partition']} offset {source['offset']}"


def _state(row: Mapping[str, Any]) -> str:
    if not row["known"]:
        return "a placeholder: goods name it, its own event has not been applied"
    return "deleted (a tombstone)" if row["deleted"] else "live"


def _command(version: int | None, service: str) -> str:
    return f"the {service} service has version {version}" if version is not None else f"the {service} service lacks it"


def _differences_table(found: Sequence[Difference]) -> list[str]:
    lines = [f"  {'ENTITY':<7} {'ID':>12}  {'FIELD':<16} {'COMMAND SIDE':<24} READ SIDE"]
    lines += [f"  {d.entity:<7} {d.id:>12}  {d.field:<16} {d.command[:24]:<24} {d.read[:24]}" for d in found]
    return lines


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def summary(report: Explanation) -> str:
    letters = _plural(report.dead_letters_total, "dead letter or parked record", "dead letters or parked records")
    if report.order is None:
        return (
            f"order {report.order_id} is not in the read model; "
            f"{_command(report.order_command_version, 'order')}; {letters} name it"
        )
    order = report.order
    source = order.source
    where = "no source" if source is None else f"{source['topic']}[{source['partition']}]@{source['offset']}"
    shown = "" if len(report.goods) == report.goods_total else f" ({len(report.goods)} shown)"
    agreement = (
        "the command databases agree"
        if report.agrees
        else f"{_plural(report.differences, 'difference')} with the command databases"
    )
    return (
        f"order {report.order_id}: version {order.version} from {where}, "
        f"{_plural(report.goods_total, 'live goods item', 'live goods')}{shown}; {agreement}; {letters}"
    )


def render(report: Explanation) -> str:
    order = report.order
    assert order is not None
    row = order.row
    lines = [
        f"order {report.order_id}: {_state(row)}",
        f"  version {order.version}; {_command(order.command_version, 'order')}",
        f"  last event applied: {_where(order)}",
    ]
    hidden = ("id", "version", *ORDERS.record)
    width = max(len(k) for k in row)
    lines += [f"  {k:<{width}}  {_shown(v)}" for k, v in row.items() if k not in hidden]
    lines.append(
        "  the command databases agree"
        if order.agrees
        else f"  the command databases differ: {_plural(len(order.differences), 'difference')}"
    )
    lines += _differences_table(order.differences) if order.differences else []
    lines.append("")
    more = report.goods_total - len(report.goods)
    lines.append(
        f"goods: {_plural(report.goods_total, 'live goods item', 'live goods')}"
        + (f", the first {len(report.goods)} shown ({more} more)" if more else "")
    )
    if report.goods:
        lines.append(
            f"  {'ID':>12} {'VERSION':>8} {'COMMAND':>8} {'PARTITION':>9} {'OFFSET':>12}  {'AGREES':<6} "
            f"{'PRICE CENTS':>11}  NAME"
        )
        for g in report.goods:
            source = g.source or {}
            lines.append(
                f"  {g.id:>12} {g.version:>8} {_shown(g.command_version):>8} {_shown(source.get('partition')):>9} "
                f"{_shown(source.get('offset')):>12}  {'yes' if g.agrees else 'NO':<6} "
                f"{_shown(g.row.get('price_cents')):>11}  {_shown(g.row.get('name'))}"
            )
        topic = report.goods[0].topic
        lines.append(f"  (PARTITION and OFFSET: of the last event applied to the row, on {topic})")
    goods_differences = [d for g in report.goods for d in g.differences] + report.other_differences
    if goods_differences:
        lines.append(f"  the command databases differ on goods: {_plural(len(goods_differences), 'difference')}")
        lines += _differences_table(goods_differences)
    lines.append("")
    lines += _letters(report)
    lines.append(summary(report))
    return "\n".join(lines)


def _letters(report: Explanation) -> list[str]:
    if not report.dead_letters_total:
        return ["dead letters and parked records: none for the order or its goods", ""]
    lines = [
        "dead letters and parked records of the order and its goods"
        + (
            f" (the first {len(report.dead_letters)} of {report.dead_letters_total})"
            if report.dead_letters_total > len(report.dead_letters)
            else ""
        )
        + ": see `order-history dlq show ID`",
        f"  {'ID':<32} {'KIND':<7} {'ENTITY':>12} {'RECORDED':<20} REASON",
    ]
    for d in report.dead_letters:
        kind = "dlq" if d.parked_reason is None else "parked"
        recorded = d.recorded_at.strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"  {d.id:<32} {kind:<7} {_shown(d.entity_id):>12} {recorded:<20} {d.reason[:100]}")
    lines.append("")
    return lines


async def run(settings: Settings, order_id: int, as_json: bool, goods_limit: int) -> int:
    """The console command; its exit status (see the module's docstring)."""
    try:
        report = await gather(settings, order_id, goods_limit)
    except WAIT_OUT_ERRORS as exc:
        print(f"error: cannot read the databases: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if report.order is None:
        if as_json:
            print(json.dumps(report.as_dict(), indent=2))
        elif report.dead_letters:
            print("\n".join(_letters(report)).rstrip())
        print(f"error: {summary(report)}", file=sys.stderr)
        return NOT_FOUND
    print(json.dumps(report.as_dict(), indent=2) if as_json else render(report))
    return 0
