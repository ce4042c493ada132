"""The whole system from outside, as a user runs it: HTTP, events, operator commands, restarts, kills.

The same tests run against the stack of `make up` (devstack: in `make test`)
and against the stack of `docker compose up` (in `make compose-test`, once for
the default stack and once for the cluster profile). They see the stack only
through its published API ports and operator commands (see targets.py), and
know what it must show from their own accepted writes (model.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import httpx
import pytest

from tests.blackbox.model import Expected, Load, client, writes
from tests.blackbox.targets import CONSUMER, ORDER_RELAY, Target

TOPICS = ("order.events", "goods.events")
STARTED = time.monotonic()


def mark(what: str) -> None:
    """A progress line with the time since the session started (shown with `pytest -s`)."""
    print(f"[blackbox {time.monotonic() - STARTED:6.1f}s] {what}", flush=True)


async def mismatches(history: httpx.AsyncClient, expected: Expected, ids: Iterable[int]) -> list[str]:
    """The orders among `ids` whose order-history detail differs from what was accepted."""
    gate = asyncio.Semaphore(16)

    async def one(oid: int) -> str | None:
        async with gate:
            r = await history.get(f"/v1/order-history/{oid}", params={"goods_limit": 1000})
        want = expected.detail(oid)
        if want is None:
            return None if r.status_code == 404 else f"order {oid}: {r.status_code}, expected 404 (deleted)"
        if r.status_code != 200:
            return f"order {oid}: {r.status_code}, expected 200"
        body = r.json()
        got = (body["user_id"], [(g["id"], g["name"]) for g in body["goods"]])
        if got != want or body["goods_count"] != len(want[1]):
            return f"order {oid}: shows {got} (goods_count {body['goods_count']}), expected {want}"
        return None

    found = await asyncio.gather(*(one(oid) for oid in ids))
    return [m for m in found if m is not None]


async def converged(target: Target, expected: Expected, timeout: float = 180) -> None:
    """Until order-history shows every order written exactly as accepted: its user, its live goods
    (ids and names), goods_count; deleted orders 404. Nothing lost, nothing doubled."""
    ids = sorted(set(expected.orders) | expected.deleted_orders)
    assert ids, "nothing was written"
    deadline = time.monotonic() + timeout
    async with client(target.urls["order_history"]) as history:
        pending = ids
        while True:
            wrong = await mismatches(history, expected, pending)
            if not wrong:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(wrong)} of {len(ids)} orders differ after {timeout:.0f}s:\n" + "\n".join(wrong[:10])
                )
            pending = [int(m.split()[1].rstrip(":")) for m in wrong]
            await asyncio.sleep(1)
        final = await mismatches(history, expected, ids)  # once more, all of them
        assert final == [], "\n".join(final[:10])


async def operator_json(target: Target, *argv: str) -> dict[str, object]:
    return await asyncio.to_thread(target.operator_json, *argv)


async def log_ends(target: Target) -> dict[str, int]:
    """Per event topic: the sum of its partitions' log ends (`order_history status`)."""
    report = await operator_json(target, "order_history", "status")
    partitions = report["partitions"]
    assert isinstance(partitions, list)
    return {topic: sum(p["log_end"] for p in partitions if p["topic"] == topic) for topic in TOPICS}


async def outbox_drained(target: Target, timeout: float = 120) -> None:
    """Until both relays have published every outbox row (`order status`, `goods status`)."""
    deadline = time.monotonic() + timeout
    for service in ("order", "goods"):
        while (await operator_json(target, service, "status"))["outbox_unpublished_events"] != 0:
            assert time.monotonic() < deadline, f"the {service} outbox not drained after {timeout:.0f}s"
            await asyncio.sleep(1)


async def caught_up(target: Target, timeout: float = 120) -> dict[str, object]:
    """Until the consumer has applied everything published (lag 0); its status then."""
    await outbox_drained(target, timeout)
    deadline = time.monotonic() + timeout
    while (report := await operator_json(target, "order_history", "status"))["lag"] != 0:
        assert time.monotonic() < deadline, f"lag still {report['lag']} after {timeout:.0f}s"
        await asyncio.sleep(1)
    return report


async def reconciled(target: Target) -> None:
    """The operator's own check: the command databases and the read model agree."""
    report = await operator_json(target, "order_history", "reconcile")
    assert report["differences"] == [], report["differences"]


async def test_apis_answer_and_the_history_shows_every_write(target: Target) -> None:
    async with httpx.AsyncClient(timeout=10) as prober:
        for service, url in target.urls.items():
            for probe in ("/healthz", "/readyz"):
                r = await prober.get(url + probe)
                assert r.status_code == 200, f"{service} {probe}: {r.status_code} {r.text}"
    expected = await writes(target.urls, 150, seed=11)
    await converged(target, expected)

    # The list: every order of ours with goods, with its count; none of ours without.
    listed: dict[int, int] = {}
    async with client(target.urls["order_history"]) as history:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"threshold": 0, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = (await history.get("/v1/order-history", params=params)).json()
            listed |= {item["id"]: item["goods_count"] for item in page["data"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    for oid in set(expected.orders) | expected.deleted_orders:
        detail = expected.detail(oid)
        count = 0 if detail is None else len(detail[1])
        assert listed.get(oid, 0) == count, f"order {oid}: listed with {listed.get(oid)}, expected {count}"


async def test_every_accepted_write_is_one_event_and_a_refused_one_none(target: Target) -> None:
    await caught_up(target)
    before = await log_ends(target)
    expected = await writes(target.urls, 120, seed=12)
    async with (
        client(target.urls["order"]) as order,
        client(target.urls["goods"]) as goods,
    ):
        assert (await order.patch("/v1/order/999999999", json={"user_id": 1})).status_code == 404
        assert (await order.post("/v1/order", json={})).status_code == 422
        assert (await goods.delete("/v1/goods/999999999")).status_code == 404
        assert (await goods.post("/v1/goods", json={"name": "no order"})).status_code == 422
    await converged(target, expected)  # every accepted write applied, so published
    after = await log_ends(target)
    assert {t: after[t] - before[t] for t in TOPICS} == {t: expected.events[t] for t in TOPICS}


async def test_operator_commands(target: Target) -> None:
    await caught_up(target)
    text = await asyncio.to_thread(target.operator, "order", "status")
    assert text.returncode == 0 and "order outbox: 0 unpublished event(s)" in text.stdout, text.stdout + text.stderr
    goods = await operator_json(target, "goods", "status")
    assert goods["relay_leader"] is not None, goods
    status = await operator_json(target, "order_history", "status")
    assert status["consumers"] == 1 and status["stuck_partitions"] == [] and status["dead_letters"] == 0, status
    history = await asyncio.to_thread(target.operator, "order_history", "status")
    assert history.returncode == 0 and "1 consumer(s) running" in history.stdout, history.stdout + history.stderr
    await reconciled(target)
    dlq = await asyncio.to_thread(target.operator, "order_history", "dlq", "list")
    assert dlq.returncode == 0, dlq.stdout + dlq.stderr
    # Refused while a consumer runs: nothing is emptied under it.
    reset = await asyncio.to_thread(target.operator, "order_history", "reset")
    assert reset.returncode == 1 and reset.stderr.startswith("error:"), reset.stdout + reset.stderr


async def test_a_stopped_consumer_catches_up_when_started_again(target: Target) -> None:
    await caught_up(target)
    await asyncio.to_thread(target.stop, CONSUMER)
    try:
        expected = await writes(target.urls, 60, seed=13)
        await outbox_drained(target)
        status = await operator_json(target, "order_history", "status")
        assert status["lag"] == expected.accepted, status  # published, not applied
        first = min(expected.orders)
        async with httpx.AsyncClient(base_url=target.urls["order_history"], timeout=10) as history:
            assert (await history.get(f"/v1/order-history/{first}")).status_code == 404
    finally:
        await asyncio.to_thread(target.start, CONSUMER)
    await converged(target, expected)
    assert (await caught_up(target))["consumers"] == 1


async def test_the_consumer_and_a_relay_killed_under_load_lose_nothing(target: Target) -> None:
    """SIGKILL of the consumer and the order relay while clients write, then the stack brought back
    (`docker compose up -d`, `make up`): every accepted write shows, none twice."""
    async with Load(target.urls, writers=4, seed=14) as load:
        await load.progressed(100)
        mark(f"killing {CONSUMER} and {ORDER_RELAY}")
        await asyncio.to_thread(target.kill, CONSUMER, ORDER_RELAY)
        await load.progressed(100)  # the APIs take writes meanwhile; they wait in the outbox
        await asyncio.to_thread(target.restore)
        mark("both back")
        await load.progressed(100)
    await converged(target, load.expected)
    mark(f"{load.expected.accepted} writes under load: all in order-history")
    await caught_up(target)
    await reconciled(target)


async def test_a_kafka_node_killed_under_load_loses_nothing(target: Target) -> None:
    """Three Kafka nodes, replication factor 3: SIGKILL of the node leading order.events[0] while
    clients write; writes are published and applied while it is down; it comes back in sync."""
    if target.kafka_nodes < 3:
        pytest.skip(f"{target.name}: one Kafka node (the cluster profile runs this test)")
    described = await asyncio.to_thread(target.describe_topic, "order.events")
    assert {len(p.replicas) for p in described.values()} == {3}, described
    victim = target.kafka_service(described[0].leader)
    async with Load(target.urls, writers=4, seed=15) as load:
        await load.progressed(100)
        mark(f"killing {victim}, the leader of order.events[0]")
        await asyncio.to_thread(target.kill, victim)
        # Without the node: new writes still reach order-history.
        while_down = await writes(target.urls, 30, seed=16)
        await converged(target, while_down, timeout=120)
        mark("writes made while it was down are in order-history")
        await load.progressed(100)
        await asyncio.to_thread(target.restore)
        mark(f"{victim} back")
        await load.progressed(100)
    await converged(target, load.expected)
    mark(f"{load.expected.accepted} writes under load: all in order-history")
    await caught_up(target)
    await reconciled(target)
    deadline = time.monotonic() + 120
    while any(len(p.isr) != 3 for p in (await asyncio.to_thread(target.describe_topic, "order.events")).values()):
        assert time.monotonic() < deadline, f"{victim} not back in sync after 120 s"
        await asyncio.sleep(2)
    sessions = await asyncio.to_thread(target.replica_sessions)
    if sessions is not None:
        assert sessions > 0, "the order-history API does not query the replica"
