"""Reducing a batch of decoded events to the newest version of each entity, with where each was read.

Events carry the entity's whole state, so only the newest event of each entity
in a batch matters (statements.py applies it); a snapshot (`*.resynced`) wins a
tie and is set apart (snapshots.py applies it). Beside each winner, the
partition and offset of the record that carried it (`Source`): the read model
stores them in the row the event writes (columns.SOURCE).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.events import CATALOGUE, Event

# Where an event was read: (partition, offset) on its entity's topic.
Source = tuple[int, int]


@dataclass
class ReducedBatch:
    orders: dict[int, Event] = field(default_factory=dict)
    goods: dict[int, Event] = field(default_factory=dict)
    # Goods whose goods.created event is in the batch: the read model has no row
    # for them, unless the event was delivered before (see `prepare`).
    created_goods: set[int] = field(default_factory=set)
    # Snapshots (*.resynced) that won their entity: applied by `apply_resynced`, not by the batch statement.
    resynced_orders: dict[int, Event] = field(default_factory=dict)
    resynced_goods: dict[int, Event] = field(default_factory=dict)
    # Where each entity's winning event (or snapshot) was read; empty when the caller gave no sources.
    order_sources: dict[int, Source] = field(default_factory=dict)
    goods_sources: dict[int, Source] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.orders) + len(self.goods)

    @property
    def has_resynced(self) -> bool:
        return bool(self.resynced_orders or self.resynced_goods)


def reduce_events(events: Iterable[Event], sources: Iterable[Source] | None = None) -> ReducedBatch:
    """Keep, per entity, the event with the highest aggregate_version (a snapshot wins a tie:
    it may be a repair of a row that claims its version); snapshots are then set apart.

    `sources`: where each of `events` was read, in the same order (None: nowhere known; the rows
    they write then have no source)."""
    batch = ReducedBatch()
    snapshots = False
    pairs: Iterable[tuple[Event, Source | None]]
    pairs = ((e, None) for e in events) if sources is None else zip(events, sources, strict=True)
    for event, source in pairs:
        kind = CATALOGUE[event.event_type]
        if kind.entity == "order":
            target, at = batch.orders, batch.order_sources
        else:
            target, at = batch.goods, batch.goods_sources
            if kind.change == "created":
                batch.created_goods.add(event.aggregate_id)
        seen = target.get(event.aggregate_id)
        if (
            seen is None
            or event.aggregate_version > seen.aggregate_version
            or (kind.change == "resynced" and event.aggregate_version == seen.aggregate_version)
        ):
            target[event.aggregate_id] = event
            if source is not None:
                at[event.aggregate_id] = source
        snapshots = snapshots or kind.change == "resynced"
    if snapshots:
        for winners, resynced in ((batch.orders, batch.resynced_orders), (batch.goods, batch.resynced_goods)):
            for entity_id, event in list(winners.items()):
                if CATALOGUE[event.event_type].change == "resynced":
                    resynced[entity_id] = winners.pop(entity_id)
    return batch
