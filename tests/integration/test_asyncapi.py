"""The AsyncAPI document: kept in the repository, served by each command service, and true to what they emit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from shared import asyncapi
from shared.events import CATALOGUE, GOODS_TOPIC, ORDER_TOPIC, TOPICS
from tests.harness import Env, command

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_document_in_the_repository_is_the_generated_one() -> None:
    assert DOCUMENT.read_text() == asyncapi.dumps(asyncapi.document()), (
        "docs/asyncapi.json is stale: python -m shared.asyncapi > docs/asyncapi.json"
    )
    doc = json.loads(DOCUMENT.read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == set(TOPICS)
    assert set(doc["components"]["messages"]) == set(CATALOGUE)
    for ref in _refs(doc):
        _resolve(doc, ref)  # every reference points into the document
    for message in doc["components"]["messages"].values():
        Draft202012Validator.check_schema(message["payload"])


async def test_each_service_serves_its_topic_and_emits_only_what_it_documents(env: Env) -> None:
    async with env.client("order") as orders, env.client("goods") as goods:
        served = {
            "order": (await orders.get("/asyncapi.json")).json(),
            "goods": (await goods.get("/asyncapi.json")).json(),
        }
        for service, topic in (("order", ORDER_TOPIC), ("goods", GOODS_TOPIC)):
            assert served[service] == asyncapi.document([topic])
        oid = (await orders.post("/v1/order", json={"user_id": 3})).json()["id"]
        await orders.patch(f"/v1/order/{oid}", json={"user_id": 4})
        gid = (await goods.post("/v1/goods", json={"order_id": oid, "name": "lamp"})).json()["id"]
        await goods.patch(f"/v1/goods/{gid}", json={"name": None})
        other = (await goods.post("/v1/goods", data={"orderId": str(oid)})).json()["id"]
        await goods.delete(f"/v1/goods/{other}")
        await orders.delete(f"/v1/order/{oid}")
    for service, ids in (("order", f"{oid}"), ("goods", f"{gid},{other}")):
        result = await command(env, service, "resync", "--ids", ids)
        assert result.returncode == 0, result.stderr

    messages = asyncapi.document()["components"]["messages"]
    seen = set()
    for service in ("order", "goods"):
        rows = await (await env.pool(service)).fetch("SELECT topic, message_key, payload FROM outbox ORDER BY id")
        for row in rows:
            payload = orjson.loads(row["payload"])
            message = messages[payload["event_type"]]
            errors = list(
                Draft202012Validator(
                    message["payload"], format_checker=Draft202012Validator.FORMAT_CHECKER
                ).iter_errors(payload)
            )
            assert not errors, (payload, [e.message for e in errors])
            assert re.fullmatch(message["bindings"]["kafka"]["key"]["pattern"], row["message_key"])
            seen.add(payload["event_type"])
    # Everything a service emits, snapshots of existing and of deleted entities included.
    assert seen == set(CATALOGUE)
