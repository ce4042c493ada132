"""Orphan goods (order_history/ops/orphans.py): counted on the consumer's /metrics, listed by
`order-history orphans`, shown by `status`; the count drops when the order arrives; the count
reads the placeholder rows only, through their partial index, on a table of 100,000 orders."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from order_history.ops import orphans
from shared.events import GoodsData, new_event
from tests.harness import Env, command
from tests.integration.test_divergence import consumer_process, metric_reaches, scrape
from tests.readmodel import encode, goods_deleted, order_created

HOUR = dt.timedelta(hours=1)


def goods_created(gid: int, order_id: int, created_at: dt.datetime) -> Any:
    data = GoodsData(id=gid, order_id=order_id, name=f"g{gid}", created_at=created_at, updated_at=created_at)
    return new_event("goods.created", gid, 1, data)


async def orphans_json(env: Env, *args: str) -> Any:
    result = await command(env, "order_history", "orphans", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_orphans_are_counted_listed_and_gone_when_their_order_arrives(env: Env) -> None:
    _, port = consumer_process(env, {"INTERVAL": "0.3"})
    now = dt.datetime.now(dt.UTC)
    await env.produce(
        encode(
            [
                order_created(500, 1),
                goods_created(1, 501, now - 2 * HOUR),  # the oldest
                goods_created(2, 501, now - HOUR),
                goods_created(3, 502, now - HOUR),
                goods_created(4, 503, now - 3 * HOUR),
                goods_deleted(4, 2, 503),  # deleted: no longer waits for its order
                goods_created(5, 500, now - 5 * HOUR),  # its order is known
            ]
        )
    )
    await metric_reaches(port, "read_model_orphan_goods", 3)
    age = (await scrape(port))["read_model_oldest_orphan_age_seconds"]
    assert 2 * 3600 <= age < 3 * 3600

    report = await orphans_json(env)
    assert report["orphan_goods"] == 3 and report["orders_waited_for"] == 2
    assert [(o["goods_id"], o["order_id"]) for o in report["orphans"]] == [(1, 501), (2, 501), (3, 502)]
    assert report["orphans"][0]["age_seconds"] >= 2 * 3600
    limited = await orphans_json(env, "--limit", "1")
    assert [o["goods_id"] for o in limited["orphans"]] == [1] and limited["orphan_goods"] == 3
    text = await command(env, "order_history", "orphans", "--limit", "2")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["GOODS", "ORDER", "CREATED", "AT", "AGE", "NAME"]
    assert lines[-1] == "3 orphan goods (2 shown) waiting for 2 order(s); the oldest created 2.0 h ago"

    # The order arrives: its goods are no longer orphans.
    await env.produce(encode([order_created(501, 7)]))
    await metric_reaches(port, "read_model_orphan_goods", 1)
    report = await orphans_json(env)
    assert [(o["goods_id"], o["order_id"]) for o in report["orphans"]] == [(3, 502)]
    status = await command(env, "order_history", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["orphans"]["orphan_goods"] == 1

    await env.produce(encode([order_created(502, 8)]))
    await metric_reaches(port, "read_model_orphan_goods", 0)
    assert (await scrape(port))["read_model_oldest_orphan_age_seconds"] == 0
    text = await command(env, "order_history", "orphans")
    assert text.stdout == "0 orphan goods: every live goods item's order is known\n"


async def test_the_orphans_command_fails_clearly_and_has_help(env: Env) -> None:
    gone = "postgresql://order_history_reader:order_history_reader@127.0.0.1:1/order_history"
    result = await command(env, "order_history", "orphans", ORDER_HISTORY_QUERY_DATABASE_URL=gone)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot read the orphan goods: ")
    assert result.stdout == ""
    helped = await command(env, "order_history", "orphans", "--help")
    assert helped.returncode == 0 and "--limit" in helped.stdout
    bad = await command(env, "order_history", "orphans", "--limit", "-1")
    assert bad.returncode == 2 and "must be at least 0" in bad.stderr


async def test_counting_orphans_reads_the_placeholders_only(env: Env) -> None:
    """100,000 orders, 20 of them placeholders: the count's plan reads the partial index, and its
    buffers do not grow with the table."""
    await env.as_owner(
        "order_history",
        """INSERT INTO orders (id, user_id, created_at, updated_at, version, known, goods_count)
               SELECT i, i % 1000, now(), now(), 1, true, 1 FROM generate_series(1, 100000) AS i;
           INSERT INTO orders (id, version, known, goods_count) SELECT i, 0, false, 1
               FROM generate_series(100001, 100020) AS i;
           INSERT INTO goods (id, order_id, name, created_at, updated_at, version)
               SELECT i, i, 'g', now(), now(), 1 FROM generate_series(1, 100020) AS i;
           ANALYZE orders; ANALYZE goods;""",
    )
    read = await env.pool("order_history")
    async with read.acquire() as conn:
        plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + orphans.FIGURES))[0]
        found = await orphans.figures(conn)
    assert (found.goods, found.orders) == (20, 20)
    nodes = list(_nodes(plan["Plan"]))
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    assert {n.get("Index Name") for n in nodes} >= {"orders_placeholders"}
    # A few pages of the index and the 20 rows, not the 100,000 rows' pages.
    assert plan["Plan"]["Shared Hit Blocks"] + plan["Plan"].get("Shared Read Blocks", 0) < 200


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)
