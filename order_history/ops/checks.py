"""What `reconcile` compares: its checks, and what differs between two sides' rows.

Three checks, each reading the same fields from a command database and from
the read model, over id ranges:

- orders: every order the order service has is in the read model, live, with
  its user; no live order there that the service does not have;
- goods: the same for goods, with their order and name;
- counts: every order's goods_count equals the number of goods the goods
  service has naming it.

Contract: `CHECKS` is every check, in the order `reconcile` and the divergence
sampler run them; a `Check` holds its SQL, never a connection.
`differences()` is pure: given each side's rows of one check (id -> fields),
a `Difference` per field that differs, or one `exists` (yes / no) for a row
only one side has. Reading the databases is order_history/ops/reconciler.py's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from order_history.projection.columns import GOODS, ORDERS, Entity

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Check:
    """One comparison: the same fields read from a command database and from the read model.

    Each SQL text has `{where}`, filled with a condition on `{key}` (an id range
    or a list of ids); `hashed` is the fields as one text, for the range sums.
    A row missing on one side counts as `absent`.
    """

    name: str
    entity: str  # what an id names: order or goods
    source: str  # the command database: order or goods
    fields: tuple[str, ...]
    command_rows: str  # SELECT id, fields...
    read_rows: str
    absent: Row  # the fields of a missing row
    key_command: str = "id"
    key_read: str = "id"

    def hashed(self, sql: str) -> str:
        """Per range: (range, rows, sum of hashes) of the rows `sql` selects (columns id, fields...)."""
        text = "concat_ws(',', id, " + ", ".join(f"quote_nullable({f})" for f in self.fields) + ")"
        return f"SELECT id / $1 AS r, count(*) AS n, sum(hashtextextended({text}, 0)) AS h FROM ({sql}) AS x GROUP BY 1"


def _rows_check(entity: Entity, source: str, live: str) -> Check:
    """The check of an entity's compared columns (order_history/projection/columns.py): the same names in its
    command database's table and in the read model's, where `live` says which read rows count."""
    fields = ", ".join(entity.compared)
    return Check(
        name=entity.table,
        entity=entity.name,
        source=source,
        fields=entity.compared,
        command_rows=f"SELECT id, {fields} FROM {entity.table} WHERE {{where}}",
        read_rows=f"SELECT id, {fields} FROM {entity.table} WHERE {live} AND {{where}}",
        absent=(None,) * len(entity.compared),
    )


CHECKS: tuple[Check, ...] = (
    _rows_check(ORDERS, "order", "known AND NOT deleted"),
    _rows_check(GOODS, "goods", "NOT deleted"),
    Check(
        name="counts",
        entity="order",
        source="goods",
        fields=("goods_count",),
        command_rows="SELECT order_id AS id, count(*) AS goods_count FROM goods WHERE {where} GROUP BY order_id",
        read_rows="SELECT id, goods_count FROM orders WHERE goods_count <> 0 AND {where}",
        absent=(0,),
        key_command="order_id",
    ),
)


@dataclass(frozen=True)
class Difference:
    entity: str
    id: int
    field: str
    command: str
    read: str

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "id": self.id, "field": self.field, "command": self.command, "read": self.read}


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def differences(check: Check, command: Mapping[int, Row], read: Mapping[int, Row]) -> list[Difference]:
    """What differs between the two sides' rows (id -> fields) of `check`."""
    out = []
    for entity_id in sorted(command.keys() | read.keys()):
        ours, theirs = command.get(entity_id), read.get(entity_id)
        if check.name != "counts" and (ours is None) != (theirs is None):
            exists = ("yes", "no") if theirs is None else ("no", "yes")
            out.append(Difference(check.entity, entity_id, "exists", *exists))
            continue
        ours, theirs = ours or check.absent, theirs or check.absent
        for name, a, b in zip(check.fields, ours, theirs, strict=True):
            if a != b:
                out.append(Difference(check.entity, entity_id, name, _shown(a), _shown(b)))
    return out
