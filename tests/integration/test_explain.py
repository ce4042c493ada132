"""`order-history explain ORDER_ID`: one order's row explained (order_history/ops/explain.py).

Orders and goods go through the real HTTP APIs, relays and consumer (in-process);
the command runs as a real process with the test's settings. The versions,
partitions and offsets it reports are checked against the records Kafka holds.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from order_history.__main__ import main
from order_history.ops import explain
from shared.events import GOODS_TOPIC, ORDER_TOPIC
from tests.harness import Env, command, wait_until
from tests.readmodel import encode, goods_event

Position = tuple[int, int, int]  # version, partition, offset


async def _last_applied(env: Env, topic: str) -> dict[int, Position]:
    """Per entity, from the topic itself: its highest version, and the first record that carried it
    (a later copy of the same version changes nothing, so the row keeps the first one's position)."""
    records: list[ConsumerRecord] = await env.read_topic(topic)
    out: dict[int, Position] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = orjson.loads(r.value)
        aggregate, version = event["aggregate_id"], event["aggregate_version"]
        seen = out.get(aggregate)
        resync_tie = seen is not None and version == seen[0] and event["event_type"].endswith(".resynced")
        if seen is None or version > seen[0] or resync_tie:
            out[aggregate] = (version, r.partition, r.offset)
    return out


def _position(row: dict[str, Any]) -> Position:
    assert row["source"] is not None, row
    return row["version"], row["source"]["partition"], row["source"]["offset"]


async def _explain(env: Env, *args: str, status: int = 0, **overrides: str) -> Any:
    result = await command(env, "order_history", "explain", "--json", *args, **overrides)
    assert result.returncode == status, result.stderr
    return json.loads(result.stdout)


async def _history(env: Env) -> tuple[int, list[int]]:
    """An order (its user changed once) with three goods, one renamed; the order's id and its goods'."""
    async with env.client("order") as orders, env.client("goods") as goods:
        oid = (await orders.post("/v1/order", json={"user_id": 7})).json()["id"]
        assert (await orders.patch(f"/v1/order/{oid}", json={"user_id": 8})).status_code == 200
        gids = []
        for name in ("lamp", "desk", "chair"):
            created = await goods.post("/v1/goods", json={"order_id": oid, "name": name, "price_cents": 1250})
            assert created.status_code == 201, created.text
            gids.append(created.json()["id"])
        assert (await goods.patch(f"/v1/goods/{gids[1]}", json={"name": "table"})).status_code == 200
    return oid, gids


async def test_explain_reports_versions_sources_agreement_and_dead_letters(env: Env) -> None:
    await env.start_pipeline()
    oid, gids = await _history(env)
    await env.settle()
    orders_at, goods_at = await _last_applied(env, ORDER_TOPIC), await _last_applied(env, GOODS_TOPIC)

    report = await _explain(env, str(oid))
    assert report["found"] is True and report["agrees"] is True and report["differences"] == 0
    order = report["order"]
    assert _position(order) == orders_at[oid] and order["version"] == 2 == order["command_version"]
    assert order["source"]["topic"] == env.topic(ORDER_TOPIC)
    assert order["row"]["user_id"] == 8 and order["row"]["goods_count"] == 3 and order["agrees"] is True
    assert [g["id"] for g in report["goods"]] == sorted(gids) and report["goods_total"] == 3
    for g in report["goods"]:
        assert _position(g) == goods_at[g["id"]] and g["version"] == g["command_version"]
        assert g["source"]["topic"] == env.topic(GOODS_TOPIC) and g["agrees"] is True
    assert {g["id"]: g["version"] for g in report["goods"]} == {gids[0]: 1, gids[1]: 2, gids[2]: 1}
    assert report["dead_letters"] == [] and report["dead_letters_total"] == 0

    text = await command(env, "order_history", "explain", str(oid))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    version, partition, offset = orders_at[oid]
    assert lines[0] == f"order {oid}: live"
    assert f"  last event applied: {env.topic(ORDER_TOPIC)} partition {partition} offset {offset}" in lines
    assert "  the command databases agree" in lines
    row = next(line for line in lines if line.strip().startswith(str(gids[1])))
    g_version, _, g_partition, g_offset = row.split()[1:5]
    assert (int(g_version), int(g_partition), int(g_offset)) == goods_at[gids[1]]
    assert lines[-1] == (
        f"order {oid}: version {version} from {env.topic(ORDER_TOPIC)}[{partition}]@{offset}, 3 live goods; "
        "the command databases agree; 0 dead letters or parked records"
    )

    # The goods shown are bounded; the rest are counted (and still compared).
    limited = await _explain(env, str(oid), "--goods-limit", "1")
    assert [g["id"] for g in limited["goods"]] == [min(gids)] and limited["goods_not_shown"] == 2
    assert limited["agrees"] is True
    text = await command(env, "order_history", "explain", str(oid), "--goods-limit", "1")
    assert "goods: 3 live goods, the first 1 shown (2 more)" in text.stdout.splitlines()
    assert text.stdout.splitlines()[-1].startswith(f"order {oid}: version 2 from ")
    assert ", 3 live goods (1 shown); " in text.stdout.splitlines()[-1]

    # A hand-edited read model: the differences, row by row (a goods item not shown among them too).
    history = await env.pool("order_history")
    await history.execute("UPDATE orders SET user_id = 99 WHERE id = $1", oid)
    await history.execute("UPDATE goods SET name = 'forged' WHERE id = $1", max(gids))
    drifted = await _explain(env, str(oid))
    assert drifted["agrees"] is False and drifted["differences"] == 2
    assert drifted["order"]["differences"] == [
        {"entity": "order", "id": oid, "field": "user_id", "command": "8", "read": "99"}
    ]
    by_id = {g["id"]: g for g in drifted["goods"]}
    assert by_id[max(gids)]["agrees"] is False and by_id[min(gids)]["agrees"] is True
    assert by_id[max(gids)]["differences"][0]["field"] == "name"
    hidden = await _explain(env, str(oid), "--goods-limit", "1")
    assert hidden["agrees"] is False and [d["id"] for d in hidden["other_differences"]] == [max(gids)]
    text = await command(env, "order_history", "explain", str(oid))
    assert text.returncode == 0, text.stderr  # found: the report says they differ
    assert "  the command databases differ: 1 difference" in text.stdout.splitlines()
    assert "; 2 differences with the command databases; " in text.stdout.splitlines()[-1]

    # A snapshot repairs the goods item: its row then records where the snapshot was read.
    resync = await command(env, "goods", "resync", "--ids", str(max(gids)))
    assert resync.returncode == 0, resync.stderr
    await history.execute("UPDATE orders SET user_id = 8 WHERE id = $1", oid)
    await env.settle()
    repaired = await _explain(env, str(oid))
    assert repaired["agrees"] is True
    snapshot_at = (await _last_applied(env, GOODS_TOPIC))[max(gids)]
    assert snapshot_at != goods_at[max(gids)] and snapshot_at[0] == goods_at[max(gids)][0]
    assert _position({g["id"]: g for g in repaired["goods"]}[max(gids)]) == snapshot_at

    # Dead letters of the order (keyed by its id) and of a goods item of it the read model never got
    # (found by the order its value names).
    poison = [
        (ORDER_TOPIC, str(oid).encode(), b"not json at all"),
        (
            GOODS_TOPIC,
            b"987654",
            orjson.dumps(
                {"event_type": "goods.created", "schema_version": 99, "aggregate_id": 987654, "data": {"order_id": oid}}
            ),
        ),
        (GOODS_TOPIC, str(min(gids)).encode(), b"\xff\xfe"),  # a goods item of the order, by its key
        (ORDER_TOPIC, str(oid + 1000).encode(), b"another order's"),
    ]
    await env.produce(poison)

    async def recorded() -> bool:
        return int(await history.fetchval("SELECT count(*) FROM dead_letters")) == len(poison)

    await wait_until(recorded, 30, "the poison records to be dead-lettered")
    lettered = await _explain(env, str(oid))
    assert lettered["dead_letters_total"] == 3
    found = {(d["topic"], d["entity_id"], d["order_id"]) for d in lettered["dead_letters"]}
    assert found == {
        (env.topic(ORDER_TOPIC), oid, oid),
        (env.topic(GOODS_TOPIC), 987654, oid),
        (env.topic(GOODS_TOPIC), min(gids), None),
    }
    assert all(d["id"] == f"{d['topic']}:{d['partition']}:{d['offset']}" for d in lettered["dead_letters"])
    text = await command(env, "order_history", "explain", str(oid))
    assert text.stdout.splitlines()[-1].endswith("; 3 dead letters or parked records")
    assert any(line.strip().startswith(f"{env.topic(GOODS_TOPIC)}:") for line in text.stdout.splitlines())


async def test_a_placeholder_has_no_source_and_an_unknown_order_is_not_found(env: Env) -> None:
    await env.start_consumer()
    await env.produce(encode([goods_event(31, 1, 4242, "early")]))  # its order's event has not come
    await env.wait_caught_up()
    goods_at = await _last_applied(env, GOODS_TOPIC)
    report = await _explain(env, "4242")
    assert report["order"]["source"] is None and report["order"]["row"]["known"] is False
    assert report["order"]["command_version"] is None and report["order"]["version"] == 0
    assert [_position(g) for g in report["goods"]] == [goods_at[31]]
    # The order service has no order 4242, the goods service no goods 31: both differ.
    assert report["agrees"] is False
    text = await command(env, "order_history", "explain", "4242")
    assert text.stdout.splitlines()[0] == "order 4242: a placeholder: goods name it, its own event has not been applied"
    assert "  last event applied: no source recorded (a placeholder, or not changed since migration 0014)" in (
        text.stdout.splitlines()
    )

    missing = await command(env, "order_history", "explain", "777777")
    assert missing.returncode == explain.NOT_FOUND == 3
    assert missing.stdout == ""
    assert missing.stderr == (
        "error: order 777777 is not in the read model; the order service lacks it; "
        "0 dead letters or parked records name it\n"
    )
    as_json = await _explain(env, "777777", status=3)
    assert as_json["found"] is False and as_json["order"] is None

    gone = "postgresql://order_history_reader:order_history_reader@127.0.0.1:1/order_history"
    unreachable = await command(env, "order_history", "explain", "4242", ORDER_HISTORY_QUERY_DATABASE_URL=gone)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: cannot read the databases: ")
    usage = await command(env, "order_history", "explain", "0")
    assert usage.returncode == 2 and "not an order id" in usage.stderr


def test_explain_is_a_subcommand_of_main(capsys: pytest.CaptureFixture[str]) -> None:
    """Through `order_history.__main__.main`, as the console script calls it: usage errors exit 2."""
    for argv in (["explain"], ["explain", "x"], ["explain", "1", "--goods-limit", "-1"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "ORDER_ID" in capsys.readouterr().err
