"""The read model's columns, each declared once.

A column here is a field of an entity's event payload that the read model
stores under the same name. From these declarations come the batch
statement's inputs and its upserts (projections.py), the snapshot statements
(`*.resynced`), how a batch encodes each value, the rows `reconcile` compares
with the command databases, and the goods fields the detail query reads.
Adding a field to goods is a line here, its payload field (shared/events.py),
its column (a migration) and, to show it, its field in the API's schema.

A column may also come from the Kafka record that carried the event rather
than from its payload (`origin`): every entity's `source_partition` and
`source_offset`, the position of the event that last changed the row (the one
whose version the row holds; its topic is the entity's), for `order-history
explain`. They go through the batch and the snapshot statements as the payload's
columns do; NULL for a placeholder order and for rows written before migration
0014 (or by a caller that gives no positions). Never compared.

The columns every entity has and that no event names (id, version, deleted;
for orders known and goods_count, for goods counted_in_before) are the
projection's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# How a batch sends a column's values: an array literal of integers or
# booleans, of quoted text, or of microseconds since 1970 (see projections.py).
Kind = Literal["int", "text", "time"]

# What an event that passes the version guard does to the stored value:
# - "take": its value replaces the stored one;
# - "keep_on_delete": as take, but a delete keeps the stored value (a delete
#   event need not carry the entity's last state);
# - "keep_if_absent": a value the event does not carry (null) keeps the stored one.
Rule = Literal["take", "keep_on_delete", "keep_if_absent"]

# Where a column's value comes from: the payload's field of the same name, or the
# partition or offset of the Kafka record that carried the event.
Origin = Literal["payload", "partition", "offset"]
# The record's columns, in this order, follow an entity's payload columns (`prepare` relies on it).
RECORD_ORIGINS: Final = ("partition", "offset")


@dataclass(frozen=True)
class Column:
    name: str  # the read model's column and the payload's field
    sql_type: str  # the column's SQL type
    kind: Kind
    rule: Rule
    compared: bool = False  # `order-history reconcile` compares it with the command database
    origin: Origin = "payload"

    @property
    def array_type(self) -> str:
        """The SQL type of the batch's array of this column (timestamps travel as microseconds)."""
        return "bigint" if self.kind == "time" else self.sql_type


@dataclass(frozen=True)
class Entity:
    """The read model's table of one entity, with the columns its events fill."""

    name: str  # the entity: "order" or "goods" (shared/events.py CATALOGUE)
    table: str
    prefix: str  # of its batch parameters: o_user_id, g_name, ...
    columns: tuple[Column, ...]  # the payload's, then the record's (RECORD_ORIGINS)

    def __post_init__(self) -> None:
        origins = tuple(c.origin for c in self.columns if c.origin != "payload")
        if origins != RECORD_ORIGINS or any(c.origin != "payload" for c in self.columns[: -len(origins)]):
            raise ValueError(f"{self.table}: the payload's columns, then the record's {RECORD_ORIGINS}")
        if any(c.compared for c in self.columns if c.origin != "payload"):
            raise ValueError(f"{self.table}: a record's column is not compared with the command database")

    @property
    def names(self) -> tuple[str, ...]:
        """Every column the statements write."""
        return tuple(c.name for c in self.columns)

    @property
    def payload(self) -> tuple[str, ...]:
        """The columns whose values the event's payload carries, under the same names."""
        return tuple(c.name for c in self.columns if c.origin == "payload")

    @property
    def record(self) -> tuple[str, ...]:
        """The columns the record that carried the event fills: its partition, then its offset."""
        return tuple(c.name for c in self.columns if c.origin != "payload")

    @property
    def compared(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.compared)

    def param(self, column: str) -> str:
        return f"{self.prefix}_{column}"


# Where the event that last changed the row was read (its topic is the entity's).
SOURCE: Final = (
    Column("source_partition", "integer", "int", "take", origin="partition"),
    Column("source_offset", "bigint", "int", "take", origin="offset"),
)

ORDERS: Final = Entity(
    name="order",
    table="orders",
    prefix="o",
    columns=(
        Column("user_id", "bigint", "int", "keep_if_absent", compared=True),
        Column("created_at", "timestamptz", "time", "keep_if_absent"),
        Column("updated_at", "timestamptz", "time", "keep_if_absent"),
        *SOURCE,
    ),
)

GOODS: Final = Entity(
    name="goods",
    table="goods",
    prefix="g",
    columns=(
        # A delete carries the goods' last order (its count goes down), not always its name.
        Column("order_id", "bigint", "int", "take", compared=True),
        Column("name", "text", "text", "keep_on_delete", compared=True),
        Column("price_cents", "bigint", "int", "keep_on_delete", compared=True),
        Column("created_at", "timestamptz", "time", "keep_if_absent"),
        Column("updated_at", "timestamptz", "time", "keep_if_absent"),
        *SOURCE,
    ),
)
