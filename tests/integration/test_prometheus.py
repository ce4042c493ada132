"""deploy/prometheus against a real Prometheus 2.x: promtool accepts the configuration and the
rules and passes the rules' unit tests; a real server scrapes a running stack, sees its
requests, events, lag and a dead letter, fires the dead-letter alert, and sees the consumer
killed and back; the relays' and the consumer's JSON log lines of that run name the topics,
partitions and offsets they are about."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from devstack import prometheus
from devstack.processes import ManagedProcess, free_port
from devstack.prometheus import DEPLOY, PrometheusServer
from devstack.startup import readyz
from tests.harness import GOODS, ORDER, Env, wait_until
from tests.readmodel import order_created

JOBS = ("order-api", "goods-api", "order-history-api", "order-relay", "goods-relay", "order-history-consumer")


def promtool(*args: str, cwd: Path = DEPLOY) -> str:
    done = subprocess.run([prometheus.binary("promtool"), *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_accepts_the_config_and_the_rules_and_their_tests_pass() -> None:
    promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 15 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")
    assert tuple(prometheus.job_names()) == JOBS


def test_a_rendered_config_is_valid_and_keeps_the_jobs_that_have_targets(tmp_path: Path) -> None:
    config = prometheus.render({"order-api": ["127.0.0.1:1"], "order-relay": ["127.0.0.1:2"]}, "1s")
    assert [job["job_name"] for job in config["scrape_configs"]] == ["order-api", "order-relay"]
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def metric_names_in_rules() -> set[str]:
    """The metric names the alert expressions read (label names, functions and keywords left out)."""
    names: set[str] = set()
    for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            expr = re.sub(r'\{[^}]*\}|"[^"]*"|\b(by|without|on|ignoring)\s*\([^)]*\)', " ", rule["expr"])
            for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr):
                if "_" in name or name == "up":
                    names.add(name)
    return names


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    parsed = [orjson.loads(line) for line in lines if line.strip()]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def span_sizes(entry: dict[str, Any]) -> int:
    """Messages named by a batch line's `offsets` ({"topic[p]": "first-last"})."""
    offsets = entry["offsets"]
    assert isinstance(offsets, dict) and offsets, entry
    total = 0
    for where, span in offsets.items():
        assert re.fullmatch(r".+\[\d+\]", where), entry
        first, last = (int(n) for n in span.split("-"))
        assert 0 <= first <= last, entry
        total += last - first + 1
    return total


@pytest.mark.slow
async def test_prometheus_scrapes_the_stack_and_fires_an_alert(env: Env) -> None:
    config = env.stack.config
    ports = {"order-relay": free_port(), "goods-relay": free_port(), "order-history-consumer": free_port()}
    variables = {
        "order-relay": "ORDER_RELAY_METRICS_PORT",
        "goods-relay": "GOODS_RELAY_METRICS_PORT",
        "order-history-consumer": "ORDER_HISTORY_METRICS_PORT",
    }
    procs = {
        "order-api": env.process("order-api", "order", "api"),
        "goods-api": env.process("goods-api", "goods", "api"),
        "order-history-api": env.process("order-history-api", "order_history", "api"),
        "order-relay": env.process("order-relay", "order", "relay"),
        "goods-relay": env.process("goods-relay", "goods", "relay"),
        "order-history-consumer": env.process("order-history-consumer", "order_history", "consumer"),
    }
    for name, proc in procs.items():
        proc.env = {**(proc.env or {}), "LOG_LEVEL": "DEBUG"}
        if name in variables:
            proc.env[variables[name]] = str(ports[name])
        proc.start()
    api_ports = {
        "order-api": config.order_port,
        "goods-api": config.goods_port,
        "order-history-api": config.history_port,
    }
    targets = {job: [f"127.0.0.1:{port}"] for job, port in {**api_ports, **ports}.items()}

    async def serving() -> bool:
        for port in (*api_ports.values(), *ports.values()):
            if await asyncio.to_thread(readyz, port) is None:
                return False
        return True

    await wait_until(serving, 60, "every process to listen")
    server = PrometheusServer(
        home=env.stack.config.state_dir / f"prometheus-{env.prefix}", port=free_port(), interval="1s"
    )
    await asyncio.to_thread(server.start, targets)
    try:
        poison_event_id = await _scrape_and_alert(env, server)
        await _consumer_killed_and_restarted(env, server, procs["order-history-consumer"])
    finally:
        await asyncio.to_thread(server.stop)
    for proc in procs.values():  # their last lines written
        proc.stop(timeout=10)
    _audit_logs(env, procs, poison_event_id)


async def _scrape_and_alert(env: Env, server: PrometheusServer) -> str:
    """The scrapes and the alert; the event_id of the dead-lettered event."""
    config = env.stack.config

    async def reaches(promql: str, expected: float, timeout: float = 60) -> None:
        await _reaches(server, promql, expected, timeout)

    await reaches(f'count(up{{job=~"{"|".join(JOBS)}"}} == 1)', len(JOBS))
    async with httpx.AsyncClient(timeout=30) as client:
        orders = [
            (await client.post(f"http://127.0.0.1:{config.order_port}/v1/order", json={"user_id": u})).json()["id"]
            for u in range(1, 21)
        ]
        for n, order_id in enumerate(orders[:10]):
            answer = await client.post(
                f"http://127.0.0.1:{config.goods_port}/v1/goods", json={"name": f"g{n}", "order_id": order_id}
            )
            assert answer.status_code == 201
        assert (await client.get(f"http://127.0.0.1:{config.order_port}/v1/order/{orders[0]}")).status_code == 200

    await reaches('sum(http_requests_total{job="order-api", method="POST", route="/v1/order", status="201"})', 20)
    await reaches('sum(http_requests_total{job="order-api", method="GET", route="/v1/order/{order_id}"})', 1)
    await reaches('sum(http_requests_total{job="goods-api", method="POST", route="/v1/goods", status="201"})', 10)
    await reaches('sum(relay_events_published_total{relay="order"})', 20)
    await reaches('sum(relay_events_published_total{relay="goods"})', 10)
    await reaches("sum(consumer_events_applied_total)", 30)
    await reaches("sum(outbox_unpublished_events)", 0)
    partitions = 2 * env.kafka.partitions
    await reaches("count(consumer_lag_events)", partitions)
    await reaches("sum(consumer_lag_events)", 0)
    await reaches("sum(relay_leader)", 2)  # each relay leads its database

    # Lag seen by Prometheus while the consumer cannot store positions: exactly what is written meanwhile.
    history = await env.pool("order_history")
    async with history.acquire() as conn, conn.transaction():
        await conn.execute("SELECT * FROM consumer_positions FOR UPDATE")
        async with httpx.AsyncClient(timeout=30) as client:
            for user in range(1, 8):
                url = f"http://127.0.0.1:{config.order_port}/v1/order"
                assert (await client.post(url, json={"user_id": user})).status_code == 201
        await reaches("sum(consumer_lag_events)", 7, timeout=40)  # within the test session's idle limit (60 s)
    await reaches("sum(consumer_lag_events)", 0)
    await reaches("sum(consumer_events_applied_total)", 37)

    # Every metric an alert reads is one the stack exposes.
    exposed = set(await asyncio.to_thread(server.api, "/api/v1/label/__name__/values"))
    assert metric_names_in_rules() - exposed == set()

    # A dead letter: the counter moves, and the alert without a `for` fires.
    poison = orjson.loads(order_created(999, 1).to_json())
    poison |= {"event_id": str(uuid.uuid4()), "schema_version": 99}
    await env.produce([(ORDER, b"999", orjson.dumps(poison))])
    await reaches("sum(consumer_dead_letters_total)", 1)

    async def firing() -> bool:
        alerts = (await asyncio.to_thread(server.api, "/api/v1/alerts"))["alerts"]
        return any(a["labels"]["alertname"] == "EventsDeadLettered" and a["state"] == "firing" for a in alerts)

    await wait_until(firing, 60, "the EventsDeadLettered alert to fire")
    rules = await asyncio.to_thread(server.api, "/api/v1/rules")
    evaluated = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(evaluated) == sum(len(g["rules"]) for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"])
    assert [(r["name"], r["health"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    return str(poison["event_id"])


async def _consumer_killed_and_restarted(env: Env, server: PrometheusServer, consumer: ManagedProcess) -> None:
    """kill -9 the consumer: Prometheus sees it down and `status` sees the lag grow by what is
    written meanwhile; restarted, it applies exactly those writes and its lag returns to 0."""
    consumer.kill9()
    await _reaches(server, 'sum(up{job="order-history-consumer"})', 0)
    async with httpx.AsyncClient(timeout=30) as client:
        for user in range(1, 6):
            url = f"http://127.0.0.1:{env.stack.config.order_port}/v1/order"
            assert (await client.post(url, json={"user_id": user})).status_code == 201

    async def lag_of_status() -> float:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "order_history", "status", "--json"],
            capture_output=True,
            text=True,
            env=env.process_env(),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return float(json.loads(done.stdout)["lag"])

    async def behind_by_five() -> bool:
        return await lag_of_status() == 5

    await wait_until(behind_by_five, 60, "order-history status to show the 5 writes not applied")
    consumer.start()
    await _reaches(server, 'sum(up{job="order-history-consumer"})', 1)
    await _reaches(server, "sum(consumer_events_applied_total)", 5)  # a new process counts from 0
    await _reaches(server, "sum(consumer_lag_events)", 0)
    assert await lag_of_status() == 0


async def _reaches(server: PrometheusServer, promql: str, expected: float, timeout: float = 60) -> None:
    async def reached() -> bool:
        result = await asyncio.to_thread(server.query, promql)
        return bool(result) and float(result[0]["value"][1]) == expected

    await wait_until(reached, timeout, f"Prometheus: {promql} == {expected}")


def _audit_logs(env: Env, procs: dict[str, ManagedProcess], poison_event_id: str) -> None:
    relays = []
    for name, topic, events in (("order-relay", ORDER, 32), ("goods-relay", GOODS, 10)):
        relay = log_lines(procs[name].log_file)
        published = [e for e in relay if e["msg"] == "batch published"]
        assert sum(span_sizes(e) for e in published) == sum(e["events"] for e in published) == events
        assert all(where.startswith(env.topic(topic) + "[") for e in published for where in e["offsets"])
        relays += relay

    consumer = log_lines(procs["order-history-consumer"].log_file)
    applied = [e for e in consumer if e["msg"] == "batch applied"]
    # 37, the poison, and 5 applied by the restarted process
    assert sum(span_sizes(e) for e in applied) == sum(e["events"] for e in applied) == 43
    poisoned = [e for e in consumer if e["msg"] == "poison message sent to DLQ"]
    assert len(poisoned) == 1
    line = poisoned[0]
    assert line["event_id"] == poison_event_id
    assert line["event_type"] == "order.created"
    assert line["topic"] == env.topic(ORDER)
    assert isinstance(line["partition"], int) and isinstance(line["offset"], int)
    assert "schema_version" in line["reason"]
    # The rule for every line: one about events names where they are.
    for entry in relays + consumer:
        if "events" in entry and entry["msg"] not in {"consumer stopped"}:
            assert "offsets" in entry, entry
        if "event_id" in entry:
            assert {"event_type", "topic", "partition", "offset"} <= set(entry), entry
