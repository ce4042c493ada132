"""`order-history status`, `order status`, `goods status`: real processes against the test stack."""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Env, command, wait_until


async def status_json(env: Env, *args: str) -> Any:
    result = await command(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_read_side_status_shows_positions_lag_and_dead_letters(env: Env) -> None:
    env.start_relay("order")
    async with env.client("order") as client:
        for user in (1, 2, 3):
            assert (await client.post("/v1/order", json={"user_id": user})).status_code == 201
    await env.wait_outbox_drained()
    before = await status_json(env, "order_history", "status")
    assert before["lag"] == 3  # nothing applied yet: every event is behind
    assert before["consumers"] == 0

    await env.start_consumer()
    await env.wait_caught_up()
    report = await status_json(env, "order_history", "status")
    assert report["lag"] == 0
    assert report["dead_letters"] == 0
    orders = [p for p in report["partitions"] if p["topic"] == env.topic("order.events")]
    assert len(orders) == env.kafka.partitions
    assert sum(p["log_end"] for p in orders) == 3
    assert all(p["fits"] for p in report["partitions"])
    assert report["newest_change_age_seconds"] is not None

    text = await command(env, "order_history", "status")
    assert text.returncode == 0, text.stderr
    assert "lag: 0 event(s)" in text.stdout
    assert "dead letters: 0" in text.stdout


async def test_command_status_shows_the_backlog_and_the_leading_relay(env: Env) -> None:
    async with env.client("goods") as client:
        for _ in range(4):
            assert (await client.post("/v1/goods", json={"order_id": 1})).status_code == 201
    waiting = await status_json(env, "goods", "status")
    assert waiting["outbox_unpublished_events"] == 4
    assert waiting["outbox_oldest_unpublished_age_seconds"] >= 0
    assert waiting["relay_leader"] is None

    relay = env.process("goods-relay", "goods", "relay")
    relay.start()

    async def led() -> bool:
        report = await status_json(env, "goods", "status")
        return report["relay_leader"] is not None and report["outbox_unpublished_events"] == 0

    await wait_until(led, 60, "a leading goods relay that published the backlog")
    text = await command(env, "goods", "status")
    assert "relay leader: pid" in text.stdout


async def test_status_fails_clearly_when_the_stack_cannot_be_reached(env: Env) -> None:
    gone = "postgresql://order_svc:order_svc@127.0.0.1:1/orders"
    result = await command(env, "order", "status", ORDER_DATABASE_URL=gone)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read the status of order")
    result = await command(env, "order_history", "status", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read the status")
