"""Every order-history answer says how current it is; `Prefer: max-staleness` bounds it (docs/freshness.md).

The command APIs, relays, consumers and the order-history API run in-process
against the test's real PostgreSQL and Kafka. Nothing here asserts how fast
the machine is: a wait is either for something that must happen whatever the
speed (a clock that moves, a lock released), or bounded generously.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from typing import Any

import httpx

from order_history.api import freshness
from shared import consistency
from shared.events import GOODS_TOPIC, ORDER_TOPIC, TOPICS
from tests.harness import Env, command, wait_until

H = consistency.HEADER


def staleness(response: httpx.Response) -> int | None:
    value = response.headers[freshness.STALENESS]
    assert re.fullmatch(freshness.STALENESS_PATTERN, value), value
    return None if value == freshness.UNKNOWN else int(value)


def watermark(response: httpx.Response) -> dict[str, dt.datetime | None]:
    value = response.headers[freshness.WATERMARK]
    assert re.fullmatch(freshness.WATERMARK_PATTERN, value), value
    pairs = dict(pair.split("=", 1) for pair in value.split(", "))
    return {topic: None if at == freshness.NONE_YET else dt.datetime.fromisoformat(at) for topic, at in pairs.items()}


async def newest_occurred_at(env: Env, topic: str) -> dt.datetime:
    records = await env.read_topic(topic)
    return max(dt.datetime.fromisoformat(json.loads(r.value)["occurred_at"]) for r in records)


async def test_every_read_says_how_current_it_is_and_an_idle_read_model_is_not_stale(env: Env) -> None:
    env.start_relay("order")
    env.start_relay("goods")
    consumer = await env.start_consumer()
    async with env.client("order") as orders, env.client("goods") as goods, env.client("order_history") as history:
        created = await orders.post("/v1/order", json={"user_id": 5})
        oid = created.json()["id"]
        added = await goods.post("/v1/goods", json={"order_id": oid, "name": "lamp"})
        tokens = f"{created.headers[H]}, {added.headers[H]}"
        listed = await history.get("/v1/order-history", headers={H: tokens, "Prefer": "wait=10"})
        detail = await history.get(f"/v1/order-history/{oid}")
        missing = await history.get("/v1/order-history/999999")
        assert (listed.status_code, detail.status_code, missing.status_code) == (200, 200, 404)
        for response in (listed, detail, missing):
            watermark(response)  # present, and of the documented form
            staleness(response)
            assert freshness.PREFERENCE_APPLIED not in response.headers

        # The watermark is, per topic, occurred_at of the newest event applied from it.
        await env.wait_caught_up()
        expected = {topic: await newest_occurred_at(env, topic) for topic in TOPICS}

        async def shows_the_newest_events() -> bool:
            return watermark(await history.get("/v1/order-history")) == expected

        await wait_until(shows_the_newest_events, 30, "the watermark to name the newest events applied")

        # Idle is not stale: as the newest event ages, the staleness stays below its age (the
        # consumer keeps recording that it has applied everything its topics hold).
        newest = max(expected.values())

        async def current_though_idle() -> bool:
            response = await history.get("/v1/order-history")
            age_ms = (dt.datetime.now(dt.UTC) - newest).total_seconds() * 1000
            found = staleness(response)
            return age_ms > 3000 and found is not None and found < age_ms - 2000

        await wait_until(current_though_idle, 60, "an idle read model's staleness to stay below its newest event's age")
        bounded = await history.get(f"/v1/order-history/{oid}", headers={"Prefer": "max-staleness=60s"})
        assert bounded.status_code == 200, bounded.text
        assert bounded.headers[freshness.PREFERENCE_APPLIED] == "max-staleness=60000ms"
        assert (staleness(bounded) or 0) <= 60000
        assert consumer.staleness() is not None  # the consumer's own gauge knows it too


async def test_a_stopped_consumer_makes_answers_staler_and_a_bounded_read_waits_then_refuses_or_is_served(
    env: Env,
) -> None:
    env.start_relay("order")
    first = await env.start_consumer()
    history_db = await env.pool("order_history")
    async with env.client("order") as orders, env.client("order_history") as history:
        created = await orders.post("/v1/order", json={"user_id": 1})
        oid = created.json()["id"]
        seen = await history.get(f"/v1/order-history/{oid}", headers={H: created.headers[H], "Prefer": "wait=10"})
        assert seen.status_code == 200

        async def known() -> bool:
            return staleness(await history.get("/v1/order-history")) is not None

        await wait_until(known, 60, "the consumer to record how current the read model is")
        await first.stop()
        for user in (2, 3, 4):  # events waiting, with no consumer to apply them
            assert (await orders.post("/v1/order", json={"user_id": user})).status_code == 201
        await env.wait_outbox_drained()

        async def stale() -> bool:
            return (staleness(await history.get("/v1/order-history")) or 0) > 2500

        await wait_until(stale, 60, "the read model to grow staler than the bound asked below")
        before = staleness(await history.get("/v1/order-history"))
        await asyncio.sleep(1.0)
        after = staleness(await history.get("/v1/order-history"))
        assert before is not None and after is not None and after > before, (before, after)

        bound = {"Prefer": "max-staleness=2000ms, wait=1"}
        started = time.monotonic()
        refused = await history.get("/v1/order-history", headers=bound)
        took = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        body = refused.json()
        assert body["error"] == "too_stale" and body["max_staleness_ms"] == 2000
        assert body["staleness_ms"] > 2000 and [f["field"] for f in body["fields"]] == ["Prefer"]
        assert (staleness(refused) or 0) > 2000 and freshness.PREFERENCE_APPLIED not in refused.headers
        assert 0.9 <= took < 30, took  # it waited the second asked for, and not for ever
        at_once = await history.get(f"/v1/order-history/{oid}", headers={"Prefer": "wait=0, max-staleness=2s"})
        assert at_once.status_code == 503 and at_once.json()["error"] == "too_stale"
        # With a token already reflected, the bound still holds (the two share the wait).
        both = await history.get(
            f"/v1/order-history/{oid}", headers={H: created.headers[H], "Prefer": "max-staleness=2s, wait=0"}
        )
        assert both.status_code == 503
        # Malformed bounds are ignored, as RFC 7240 asks: the answer is given, and says how stale it is.
        for value in ("max-staleness=soon", "max-staleness=-1", "max-staleness=1h", "max-staleness"):
            ignored = await history.get("/v1/order-history", headers={"Prefer": value})
            assert ignored.status_code == 200, (value, ignored.text)
            assert freshness.PREFERENCE_APPLIED not in ignored.headers and (staleness(ignored) or 0) > 2000

        # A bounded read waits for the read model to be fresh enough: the next consumer is held
        # by a lock on the read model's orders until the read is waiting.
        async with history_db.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE orders IN SHARE MODE")
            await env.start_consumer()

            async def consumer_blocked() -> bool:
                found = await history_db.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE application_name = 'order-history-consumer' AND wait_event_type = 'Lock'"""
                )
                return bool(found)

            await wait_until(consumer_blocked, 60, "the consumer to wait for the read model's lock")
            waiting = asyncio.ensure_future(
                history.get("/v1/order-history", headers={"Prefer": "max-staleness=2000ms, wait=10"})
            )
            await asyncio.sleep(0.2)
            assert not waiting.done()
        served = await waiting
        assert served.status_code == 200, served.text
        assert served.headers[freshness.PREFERENCE_APPLIED] == "max-staleness=2000ms"
        assert (staleness(served) or 0) <= 2000


async def test_staleness_is_unknown_before_any_consumer_and_empty_topics_are_current(env: Env) -> None:
    async with env.client("order_history") as history:
        before = await history.get("/v1/order-history")
        assert before.status_code == 200
        assert staleness(before) is None
        assert watermark(before) == {ORDER_TOPIC: None, GOODS_TOPIC: None}
        refused = await history.get("/v1/order-history/1", headers={"Prefer": "max-staleness=60s, wait=0"})
        assert refused.status_code == 503 and refused.json()["staleness_ms"] is None

        await env.start_consumer()  # both topics empty: current once the consumer has seen their ends

        async def current() -> bool:
            response = await history.get("/v1/order-history", headers={"Prefer": "max-staleness=60s, wait=10"})
            return response.status_code == 200 and freshness.PREFERENCE_APPLIED in response.headers

        await wait_until(current, 60, "empty topics to count as current")
        after = await history.get("/v1/order-history")
        assert watermark(after) == {ORDER_TOPIC: None, GOODS_TOPIC: None}
        assert staleness(after) is not None


async def test_the_freshness_headers_are_documented_as_answered(env: Env) -> None:
    async with env.client("order_history") as history:
        doc: dict[str, Any] = (await history.get("/openapi.json")).json()
        answer = await history.get("/v1/order-history")
    for path, statuses in (("/v1/order-history", ("200",)), ("/v1/order-history/{order_id}", ("200", "404"))):
        operation = doc["paths"][path]["get"]
        for status in statuses:
            headers = operation["responses"][status]["headers"]
            for name in (freshness.WATERMARK, freshness.STALENESS):
                assert re.fullmatch(headers[name]["schema"]["pattern"], answer.headers[name]), (path, status, name)
            assert freshness.PREFERENCE_APPLIED in headers
        too_stale = operation["responses"]["503"]
        assert "max-staleness" in too_stale["description"] and "Retry-After" in too_stale["headers"]
        prefer = next(p for p in operation["parameters"] if p["name"] == "Prefer")
        assert "max-staleness=500ms" in prefer["description"] and "pattern" not in prefer["schema"]
    schema = doc["components"]["schemas"]["TooStaleBody"]["properties"]
    assert {"staleness_ms", "max_staleness_ms"} <= set(schema)


async def test_status_shows_the_watermark_and_staleness(env: Env) -> None:
    env.start_relay("order")
    async with env.client("order") as orders:
        assert (await orders.post("/v1/order", json={"user_id": 1})).status_code == 201
    await env.start_consumer()
    await env.wait_caught_up()

    async def reported() -> dict[str, Any] | None:
        result = await command(env, "order_history", "status", "--json")
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report if report["staleness_ms"] is not None else None

    found: list[dict[str, Any]] = []

    async def known() -> bool:
        report = await reported()
        if report is not None:
            found.append(report)
        return report is not None

    await wait_until(known, 60, "status to know the staleness")
    report = found[-1]
    assert report["watermark"][ORDER_TOPIC] is not None and report["watermark"][GOODS_TOPIC] is None
    assert all(p["caught_up_at"] is not None for p in report["partitions"])
    text = await command(env, "order_history", "status")
    assert "read model staleness: " in text.stdout and f"watermark: {ORDER_TOPIC} " in text.stdout
