"""The events as an AsyncAPI 3 document, generated from the event catalogue (shared/events.py).

One channel per topic, one message per event type with the envelope's JSON
Schema and its `data` model's at the type's current schema version, and the
Kafka binding of the key (the aggregate id in decimal). Each command service
serves the document of its own topic at `/asyncapi.json`; `docs/asyncapi.json`
holds the whole one (`python -m shared.asyncapi > docs/asyncapi.json`), and a
test keeps it equal to what this module generates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from pydantic import TypeAdapter

from shared.events import CATALOGUE, ENVELOPE_FIELDS, FIELD_TYPES, MAX_ID, TOPICS

VERSION: Final = "1.0.0"


def _field_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(FIELD_TYPES[name]).json_schema()
    return schema


def message_schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of one event type's messages at its current schema version."""
    kind = CATALOGUE[event_type]
    properties: dict[str, Any] = {}
    for name in ENVELOPE_FIELDS:
        if name == "event_type":
            properties[name] = {"const": event_type}
        elif name == "schema_version":
            properties[name] = {"const": kind.current}
        elif name == "data":
            properties[name] = kind.models[kind.current].model_json_schema()
        else:
            properties[name] = _field_schema(name)
    return {
        "type": "object",
        "properties": properties,
        "required": list(ENVELOPE_FIELDS),
        # Consumers ignore fields they do not know, so producers may add some.
        "additionalProperties": True,
    }


def _channel_key(topic: str) -> str:
    return topic.replace(".", "-")


def document(topics: Iterable[str] = TOPICS) -> dict[str, Any]:
    """The AsyncAPI 3 document of `topics` (default: all)."""
    chosen = [t for t in TOPICS if t in set(topics)]
    types = {t: [e for e, kind in CATALOGUE.items() if kind.topic == t] for t in chosen}
    key = {"type": "string", "pattern": "^[1-9][0-9]*$", "maxLength": len(str(MAX_ID))}
    messages = {
        event_type: {
            "name": event_type,
            "title": event_type,
            "summary": f"a {CATALOGUE[event_type].change} {CATALOGUE[event_type].entity}, whole state in `data`",
            "contentType": "application/json",
            "payload": message_schema(event_type),
            "bindings": {"kafka": {"key": key, "bindingVersion": "0.5.0"}},
        }
        for topic in chosen
        for event_type in types[topic]
    }
    channels = {
        _channel_key(topic): {
            "address": topic,
            "description": f"every change of one entity in one partition (keyed by its id), in order; "
            f"prefixed by KAFKA_TOPIC_PREFIX when set. Poison messages go to {topic}.dlq.",
            "messages": {e: {"$ref": f"#/components/messages/{e}"} for e in types[topic]},
        }
        for topic in chosen
    }
    operations = {
        f"publish-{_channel_key(topic)}": {
            "action": "send",
            "summary": "the service's outbox relay publishes each committed change at least once",
            "channel": {"$ref": f"#/channels/{_channel_key(topic)}"},
            "messages": [{"$ref": f"#/channels/{_channel_key(topic)}/messages/{e}"} for e in types[topic]],
        }
        for topic in chosen
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "order-history events",
            "version": VERSION,
            "description": "Events of the order and goods services: UTF-8 JSON values keyed by the aggregate id. "
            "Generated from shared/events.py.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    print(dumps(document()), end="")
