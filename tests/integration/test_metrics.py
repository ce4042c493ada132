"""`GET /metrics` of the APIs: request counts by route template, durations, the outbox backlog,
and counts that add up across uvicorn workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from devstack.processes import children_of, free_port
from devstack.startup import readyz
from tests.harness import Env, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def requests(samples: Samples, method: str, route: str, status: int) -> float:
    labels = (("method", method), ("route", route), ("status", str(status)))
    return samples.get(("http_requests_total", labels), 0.0)


async def test_requests_are_counted_by_route_template_and_status(env: Env) -> None:
    async with env.client("order") as client:
        before = await scrape(client)
        ids = [(await client.post("/v1/order", json={"user_id": u})).json()["id"] for u in (1, 2, 3)]
        for order_id in ids:
            assert (await client.get(f"/v1/order/{order_id}")).status_code == 200
        assert (await client.get("/v1/order/999999")).status_code == 404
        assert (await client.put(f"/v1/order/{ids[0]}")).status_code == 405
        for n in range(5):  # a scanner's paths: one label, not one series each
            assert (await client.get(f"/wp-admin/{n}.php")).status_code == 404
        after = await scrape(client)

    def delta(method: str, route: str, status: int) -> float:
        return requests(after, method, route, status) - requests(before, method, route, status)

    assert delta("POST", "/v1/order", 201) == 3
    assert delta("GET", "/v1/order/{order_id}", 200) == 3
    assert delta("GET", "/v1/order/{order_id}", 404) == 1
    assert delta("PUT", "/v1/order/{order_id}", 405) == 1
    assert delta("GET", "(unmatched)", 404) == 5
    assert not [key for key in after if "wp-admin" in str(key)]
    count = ("http_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/order/{order_id}")))
    assert after[count] - before.get(count, 0.0) == 4
    # No relay runs: the three creates wait in the outbox.
    assert after[("outbox_unpublished_events", ())] == 3
    assert after[("outbox_oldest_unpublished_age_seconds", ())] >= 0


async def test_the_read_api_has_metrics_without_an_outbox(env: Env) -> None:
    async with env.client("order_history") as client:
        assert (await client.get("/v1/order-history")).status_code == 200
        samples = await scrape(client)
    assert requests(samples, "GET", "/v1/order-history", 200) >= 1
    assert not [key for key in samples if key[0].startswith("outbox_")]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def test_counts_add_up_across_two_workers(env: Env) -> None:
    api = env.process("order-api", "order", "api")
    api.env = {**(api.env or {}), "ORDER_API_WORKERS": "2"}
    api.start()
    port = env.stack.config.order_port

    async def ready() -> bool:
        return await asyncio.to_thread(readyz, port) == 200

    await wait_until(ready, 60, "the order API with two workers")
    pid = api.pid()
    assert pid is not None

    def workers() -> list[int]:
        # uvicorn's workers are multiprocessing children (spawn_main); the resource tracker is not one.
        return [child for child in children_of(pid) if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]

    await wait_until(lambda: asyncio.sleep(0, len(workers()) == 2), 60, "two uvicorn workers")
    ticks = {w: cpu_ticks(w) for w in workers()}
    # A new connection per request, many at once: both workers accept some.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
        sem = asyncio.Semaphore(32)

        async def create(user: int) -> None:
            async with sem:
                assert (await client.post("/v1/order", json={"user_id": user})).status_code == 201

        # Rounds of 100 until both workers have served some, however the kernel
        # hands out the connections (bounded: 20 rounds).
        sent = 0
        while sent < 2000 and (sent == 0 or not all(cpu_ticks(w) > ticks[w] for w in ticks)):
            await asyncio.gather(*(create(u) for u in range(sent + 1, sent + 101)))
            sent += 100
        assert all(cpu_ticks(w) > ticks[w] for w in ticks), "one worker served every request"
        # Whichever worker answers the scrape, it reports both workers' counts.
        for _ in range(10):
            assert requests(await scrape(client), "POST", "/v1/order", 201) == sent


def gauge(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape_port(port: int) -> Samples:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return await scrape(client)


async def test_relay_and_consumer_metrics_follow_the_pipeline(env: Env) -> None:
    ports = {name: free_port() for name in ("order-relay", "goods-relay", "consumer")}
    procs = {
        "order-relay": env.process("order-relay", "order", "relay"),
        "goods-relay": env.process("goods-relay", "goods", "relay"),
        "consumer": env.process("consumer", "order_history", "consumer"),
    }
    variables = {
        "order-relay": "ORDER_RELAY_METRICS_PORT",
        "goods-relay": "GOODS_RELAY_METRICS_PORT",
        "consumer": "ORDER_HISTORY_METRICS_PORT",
    }
    for name, proc in procs.items():
        proc.env = {**(proc.env or {}), variables[name]: str(ports[name])}
        proc.start()

    async def serving() -> bool:
        try:
            for port in ports.values():
                await scrape_port(port)
        except httpx.TransportError:
            return False
        return True

    await wait_until(serving, 60, "the relays' and the consumer's /metrics")
    async with env.client("order") as client:
        for user in range(1, 26):
            assert (await client.post("/v1/order", json={"user_id": user})).status_code == 201
    await env.wait_outbox_drained()
    await env.wait_caught_up()

    relay = await scrape_port(ports["order-relay"])
    assert gauge(relay, "relay_events_published_total", relay="order") == 25
    assert gauge(relay, "relay_leader", relay="order") == 1
    assert gauge(relay, "relay_publish_errors_total", relay="order") == 0
    goods = await scrape_port(ports["goods-relay"])
    assert gauge(goods, "relay_events_published_total", relay="goods") == 0

    async def applied() -> bool:
        samples = await scrape_port(ports["consumer"])
        return gauge(samples, "consumer_events_applied_total", event_type="order.created") == 25

    await wait_until(applied, 30, "the consumer to count 25 applied order.created")
    consumer = await scrape_port(ports["consumer"])
    lags = {key: value for key, value in consumer.items() if key[0] == "consumer_lag_events"}
    assert lags and all(value == 0 for value in lags.values()), lags
    freshness = gauge(consumer, "read_model_freshness_seconds")
    assert freshness is not None and freshness >= 0
    assert gauge(consumer, "consumer_halted") == 0
    assert gauge(consumer, "consumer_dead_letters_total") == 0

    # The consumer cannot apply while the test holds its position rows: lag grows by
    # what is written meanwhile, and returns to 0 once the rows are free.
    history = await env.pool("order_history")
    async with history.acquire() as conn, conn.transaction():
        await conn.execute("SELECT * FROM consumer_positions FOR UPDATE")
        async with env.client("order") as client:
            for user in range(1, 11):
                assert (await client.post("/v1/order", json={"user_id": user})).status_code == 201

        async def behind() -> bool:
            samples = await scrape_port(ports["consumer"])
            return sum(v for k, v in samples.items() if k[0] == "consumer_lag_events") == 10

        # Within the test's own session limit (idle in transaction 60 s).
        await wait_until(behind, 30, "the consumer's lag to reach the 10 writes it cannot apply")

    async def caught_up() -> bool:
        samples = await scrape_port(ports["consumer"])
        return sum(v for k, v in samples.items() if k[0] == "consumer_lag_events") == 0

    await wait_until(caught_up, 60, "the consumer's lag to return to 0")
    final = await scrape_port(ports["consumer"])
    assert gauge(final, "consumer_events_applied_total", event_type="order.created") == 35
