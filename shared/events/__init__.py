"""The event contract: the payloads, `CATALOGUE` (the one table of event types), the envelope, decoding.

- payloads.py: each entity's state as its events carry it;
- catalogue.py: each event type's topic, entity, change and payload model per
  schema version, with the upcasters of older versions; the topics are derived
  from it;
- envelope.py: `Event`, the envelope's one statement, and `new_event` /
  `envelope_sql`, which make events in Python and in the outbox's SQL;
- codec.py: `decode_event`, which turns a raw Kafka value into an `Event` or
  raises `PoisonMessage` with a reason fit for a DLQ header.

Everything is imported from `shared.events`. docs/architecture.md lists the
steps to add a field or an event type.
"""

from shared.events.catalogue import (
    CATALOGUE,
    GOODS_TOPIC,
    ORDER_TOPIC,
    TOPIC_OF_TYPE,
    TOPICS,
    Change,
    EventKind,
    EventType,
    KnownType,
    Upcaster,
    dlq_topic,
)
from shared.events.codec import CODEC, Codec, PoisonMessage, decode_event
from shared.events.envelope import (
    ENVELOPE_FIELDS,
    FIELD_TYPES,
    GONE_VERSION,
    MAX_VERSION,
    AggregateVersion,
    Event,
    SchemaVersion,
    envelope_sql,
    new_event,
)
from shared.events.payloads import (
    EARLIEST,
    LATEST,
    MAX_ID,
    MAX_NAME_LENGTH,
    GoodsData,
    GoodsDeletedData,
    GoodsResyncedData,
    Id,
    OrderData,
    OrderDeletedData,
    OrderResyncedData,
    Payload,
    Price,
    Text,
    Timestamp,
)

__all__ = [
    "CATALOGUE",
    "CODEC",
    "EARLIEST",
    "ENVELOPE_FIELDS",
    "FIELD_TYPES",
    "GONE_VERSION",
    "GOODS_TOPIC",
    "LATEST",
    "MAX_ID",
    "MAX_NAME_LENGTH",
    "MAX_VERSION",
    "ORDER_TOPIC",
    "TOPICS",
    "TOPIC_OF_TYPE",
    "AggregateVersion",
    "Change",
    "Codec",
    "Event",
    "EventKind",
    "EventType",
    "GoodsData",
    "GoodsDeletedData",
    "GoodsResyncedData",
    "Id",
    "KnownType",
    "OrderData",
    "OrderDeletedData",
    "OrderResyncedData",
    "Payload",
    "PoisonMessage",
    "Price",
    "SchemaVersion",
    "Text",
    "Timestamp",
    "Upcaster",
    "decode_event",
    "dlq_topic",
    "envelope_sql",
    "new_event",
]
