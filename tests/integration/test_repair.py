"""Repair tools against the real stack: resync, reconcile (and --repair), dlq list/show/replay/purge.

The console commands run as real processes with the test's settings; the
relays and the consumer run in-process against the test's broker and databases.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from typing import Any

import orjson

from order_history.ops import dlq
from order_history.ops.reconciler import Reconciler
from shared import events
from shared.events import GONE_VERSION, GoodsData, GoodsResyncedData, new_event
from tests.harness import GOODS, Env, command
from tests.readmodel import T0, command_snapshot, encode, goods_event, order_created, read_model_snapshot
from tests.workload import Workload


async def _some_history(env: Env) -> tuple[list[int], list[int]]:
    """12 orders, 40 goods spread over them, some renamed, moved and deleted; returns the live ids."""
    async with env.client("order") as orders, env.client("goods") as goods:
        order_ids = [(await orders.post("/v1/order", json={"user_id": 100 + i})).json()["id"] for i in range(12)]
        goods_ids = []
        for i in range(40):
            created = await goods.post("/v1/goods", json={"order_id": order_ids[i % 12], "name": f"item {i}"})
            goods_ids.append(created.json()["id"])
        for gid in goods_ids[:5]:
            assert (await goods.patch(f"/v1/goods/{gid}", json={"order_id": order_ids[0]})).status_code == 200
        for gid in goods_ids[5:8]:
            assert (await goods.delete(f"/v1/goods/{gid}")).status_code == 204
        assert (await orders.delete(f"/v1/order/{order_ids[-1]}")).status_code == 204
    return order_ids[:-1], goods_ids[:5] + goods_ids[8:]


async def _reconcile(env: Env, *args: str) -> tuple[int, Any]:
    result = await command(env, "order_history", "reconcile", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


async def _agree(env: Env) -> None:
    """The existing oracle: the read model equals the command databases."""
    expected = await command_snapshot(await env.pool("order"), await env.pool("goods"))
    assert await read_model_snapshot(await env.pool("order_history")) == expected


async def test_reconcile_finds_drift_and_repair_fixes_it(env: Env) -> None:
    await env.start_pipeline()
    order_ids, goods_ids = await _some_history(env)
    await env.settle()
    status, report = await _reconcile(env)
    assert status == 0 and report["differences"] == []
    # Counts: also the deleted order, which goods still name.
    assert report["compared"] == {"orders": 11, "goods": 37, "counts": 12}

    history = await env.pool("order_history")
    tampered_order, lost_goods, renamed_goods = order_ids[3], goods_ids[10], goods_ids[11]
    count = await history.fetchval("SELECT goods_count FROM orders WHERE id = $1", tampered_order)
    await history.execute("UPDATE orders SET goods_count = goods_count + 5 WHERE id = $1", tampered_order)
    await history.execute("DELETE FROM goods WHERE id = $1", lost_goods)
    await history.execute("UPDATE goods SET name = 'forged' WHERE id = $1", renamed_goods)
    # A range of ids (with --range-size 4) where nothing differs is not read row by row.
    status, report = await _reconcile(env, "--range-size", "4")
    assert status == 1
    found = {(d["entity"], d["id"], d["field"]): (d["command"], d["read"]) for d in report["differences"]}
    name = await (await env.pool("goods")).fetchval("SELECT name FROM goods WHERE id = $1", renamed_goods)
    assert found == {
        ("order", tampered_order, "goods_count"): (str(count), str(count + 5)),
        ("goods", lost_goods, "exists"): ("yes", "no"),
        ("goods", renamed_goods, "name"): (name, "forged"),
    }
    assert 0 < report["ranges_differing"] < report["ranges"]

    text = await command(env, "order_history", "reconcile")
    assert text.returncode == 1
    assert "goods_count" in text.stdout and "3 difference(s)" in text.stdout

    status, report = await _reconcile(env, "--repair")
    assert status == 0, report
    assert report["differences"] == [] and report["repair"]["differences_before"] == 3
    assert report["repair"]["not_repaired"] == []
    await _agree(env)
    text = await command(env, "order_history", "reconcile")
    assert text.returncode == 0 and text.stdout.startswith("0 difference(s)"), text.stdout


async def test_resync_restores_tampered_rows_and_deletes_what_is_gone(env: Env) -> None:
    await env.start_pipeline()
    order_ids, goods_ids = await _some_history(env)
    await env.settle()
    history = await env.pool("order_history")
    versions = {r["id"]: r["version"] for r in await history.fetch("SELECT id, version FROM goods")}
    # Rows that claim their true version but hold other data: the version guard alone would keep them.
    await history.execute("UPDATE orders SET user_id = 999999 WHERE id = $1", order_ids[0])
    await history.execute("UPDATE goods SET order_id = $2 WHERE id = $1", goods_ids[0], order_ids[5])
    # A deleted goods item brought back to life in the read model.
    deleted = await history.fetchval("SELECT id FROM goods WHERE deleted ORDER BY id LIMIT 1")
    await history.execute("UPDATE goods SET deleted = false WHERE id = $1", deleted)

    result = await command(env, "order", "resync", "--ids", str(order_ids[0]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("resynced 1 order(s)")
    result = await command(env, "goods", "resync", "--ids", f"{goods_ids[0]},{deleted}", "--ids", "999999")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("resynced 1 goods(s); 1 deleted (published as exists: false); 1 never created")
    await env.settle()
    await _agree(env)
    assert await history.fetchval("SELECT version FROM goods WHERE id = $1", deleted) == GONE_VERSION
    assert await history.fetchval("SELECT version FROM goods WHERE id = $1", goods_ids[0]) == versions[goods_ids[0]]
    assert (await _reconcile(env))[0] == 0

    # --all, in batches: every entity once more, nothing changes.
    await env.journal_outbox("goods")
    outbox = await env.pool("goods")
    result = await command(env, "goods", "resync", "--all", "--batch-size", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"resynced {len(goods_ids)} goods(s)")
    resynced = await outbox.fetchval(
        "SELECT count(*) FROM outbox_journal WHERE payload->>'event_type' = 'goods.resynced'"
    )
    assert resynced == len(goods_ids)
    await env.settle()
    await _agree(env)
    rows = await history.fetch("SELECT id, version FROM goods WHERE version < $1", GONE_VERSION)
    assert {r["id"]: r["version"] for r in rows} == {gid: v for gid, v in versions.items() if gid != deleted}

    bad = await command(env, "goods", "resync", "--ids", "1,x")
    assert bad.returncode == 2 and "not an id: 'x'" in bad.stderr
    bad = await command(env, "goods", "resync", "--since", "2026-01-01T00:00:00")
    assert bad.returncode == 2 and "needs a zone" in bad.stderr


def _resynced(gid: int, version: int, order_id: int, name: str) -> events.Event:
    data = GoodsResyncedData(id=gid, order_id=order_id, name=name, created_at=T0, updated_at=T0)
    return new_event("goods.resynced", gid, version, data)


async def test_a_snapshot_overwrites_its_own_version_but_never_a_newer_one(env: Env) -> None:
    await env.start_consumer()
    stream = [
        order_created(5, 1),
        goods_event(1, 1, 5, "first"),
        goods_event(1, 2, 5, "second"),
        _resynced(1, 1, 5, "stale snapshot"),  # older than what the read model has: changes nothing
        goods_event(2, 1, 5, "other"),
        _resynced(2, 1, 5, "repaired"),  # the same version: a repair, applied
    ]
    await env.produce(encode(stream))
    await env.wait_caught_up()
    history = await env.pool("order_history")
    rows = {r["id"]: (r["name"], r["version"]) for r in await history.fetch("SELECT id, name, version FROM goods")}
    assert rows == {1: ("second", 2), 2: ("repaired", 1)}
    assert await history.fetchval("SELECT goods_count FROM orders WHERE id = 5") == 2


async def test_dead_letters_are_listed_shown_replayed_after_an_upcaster_and_purged(env: Env) -> None:
    await env.start_consumer()
    # A goods service one release ahead publishes goods.created v3, which adds a colour.
    newer = orjson.loads(goods_event(7, 1, 3, "lamp").to_json())
    newer |= {"schema_version": 3, "event_id": str(uuid.uuid4())}
    newer["data"]["colour"] = "red"
    await env.produce([*encode([order_created(3, 1)]), (GOODS, b"7", orjson.dumps(newer)), (GOODS, b"8", b"not json")])
    await env.wait_caught_up()

    listed = await command(env, "order_history", "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = {d.get("event_type", "?"): d for d in json.loads(listed.stdout)}
    assert set(letters) == {"goods.created", "?"}
    v3, junk = letters["goods.created"], letters["?"]
    assert "unknown schema_version 3" in v3["reason"] and v3["topic"] == env.topic(GOODS)
    shown = await command(env, "order_history", "dlq", "show", v3["id"])
    assert json.loads(json.loads(shown.stdout)["value"])["data"]["colour"] == "red"
    table = await command(env, "order_history", "dlq", "list")
    assert table.stdout.splitlines()[-1] == "2 dead letter(s)"

    # The deployed code knows v1 and v2 only: the replay refuses it again, and says so.
    again = await command(env, "order_history", "dlq", "replay", v3["id"])
    assert again.returncode == 1 and "still refused: unknown schema_version 3" in again.stderr

    # The next release knows goods.created v3 (and lifts v2 to it): the replay applies the event.
    class GoodsDataV3(GoodsData):
        colour: str | None = None

    created = events.CATALOGUE["goods.created"]
    upgraded = replace(
        created,
        models={**created.models, 3: GoodsDataV3},
        upcasters={**created.upcasters, 2: lambda d: {**d, "colour": None}},
    )
    codec = events.Codec({**events.CATALOGUE, "goods.created": upgraded})
    origin = dlq.Origin.parse(v3["id"])
    settings = env.history_settings().model_copy(update={"kafka_topic_prefix": env.prefix, "consumer_group": env.group})
    outcome = await dlq.replay_letters(settings, [origin], codec)
    assert outcome.applied == [origin] and outcome.refused == []
    history = await env.pool("order_history")
    assert await history.fetchval("SELECT name FROM goods WHERE id = 7") == "lamp"
    assert await history.fetchval("SELECT goods_count FROM orders WHERE id = 3") == 1

    unknown = await command(env, "order_history", "dlq", "purge", f"{env.topic(GOODS)}:0:999999")
    assert unknown.returncode == 1 and "no such dead letter" in unknown.stderr
    purged = await command(env, "order_history", "dlq", "purge", junk["id"])
    assert purged.returncode == 0 and purged.stdout.strip() == "purged 1 dead letter(s)"
    assert await history.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_reconcile_in_process_agrees_with_the_snapshot_oracle(env: Env) -> None:
    """The Reconciler the fault tests use as their second oracle, on a fresh pipeline."""
    await env.start_pipeline()
    await _some_history(env)
    await env.settle()
    async with Reconciler(env.history_settings()) as reconciler:
        report = await reconciler.compare()
    assert report.differences == []
    await _agree(env)


async def test_resync_waits_for_the_relay_and_fails_clearly_when_none_publishes(env: Env) -> None:
    async with env.client("goods") as goods:
        for i in range(20):
            assert (await goods.post("/v1/goods", json={"order_id": 1 + i % 3})).status_code == 201
    # No relay: the 20 creations wait in the outbox. Batches of 5 may fill it up to 25, then no room.
    stalled = await command(
        env, "goods", "resync", "--all", "--batch-size", "5", "--max-backlog", "25", "--stall-timeout", "2"
    )
    assert stalled.returncode == 1
    assert "the outbox holds 30 unpublished events and no relay publishes them" in stalled.stderr
    await env.journal_outbox("goods")  # from here: the 20 snapshots of the second resync
    env.start_relay("goods")
    done = await command(env, "goods", "resync", "--all", "--batch-size", "5", "--max-backlog", "25")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("resynced 20 goods(s)")
    outbox = await env.pool("goods")
    assert (
        await outbox.fetchval("SELECT count(*) FROM outbox_journal WHERE payload->>'event_type' = 'goods.resynced'")
        == 20
    )
    await env.wait_outbox_drained()  # the 10 of the stalled run and the 20 published


async def test_resync_all_while_writes_go_on_never_lets_a_snapshot_undo_a_change(env: Env) -> None:
    """Snapshots read while the same entities change: whichever arrives last, the newest version wins."""
    await env.start_pipeline()
    workload = Workload(await env.pool("order"), await env.pool("goods"))
    await workload.run(accepted=400, seed=11)
    done = asyncio.Event()
    writes = asyncio.create_task(workload.run(accepted=0, seed=12, concurrency=4, until=done.is_set))
    for service in ("goods", "order", "goods"):
        result = await command(env, service, "resync", "--all", "--batch-size", "50")
        assert result.returncode == 0, result.stderr
    done.set()
    await writes
    await env.settle()
    await _agree(env)
    status, report = await _reconcile(env)
    assert status == 0, report
