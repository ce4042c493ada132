"""`make up PROMETHEUS=1` / `make down` (python -m devstack up|down): all up, Prometheus scraping
every process, then nothing of ours left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from devstack.processes import free_port, pid_alive
from devstack.stack import REPO


@pytest.mark.slow
def test_up_twice_then_down_leaves_nothing_running() -> None:
    state_dir = REPO / ".devstack" / f"test-lifecycle-{free_port()}"
    ports = {
        "PG_PORT": free_port(),
        "KAFKA_PORT": free_port(),
        "KAFKA_CONTROLLER_PORT": free_port(),
        "ORDER_PORT": free_port(),
        "GOODS_PORT": free_port(),
        "ORDER_HISTORY_PORT": free_port(),
        "ORDER_RELAY_METRICS_PORT": free_port(),
        "GOODS_RELAY_METRICS_PORT": free_port(),
        "ORDER_HISTORY_METRICS_PORT": free_port(),
        "PROMETHEUS_PORT": free_port(),
    }
    env = {**os.environ, "STACK_DIR": str(state_dir), "PROMETHEUS": "1", **{k: str(v) for k, v in ports.items()}}

    def devstack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devstack", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )

    try:
        up = devstack("up")
        assert up.returncode == 0, up.stderr
        for name in ("ORDER_PORT", "GOODS_PORT", "ORDER_HISTORY_PORT"):
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5) as r:
                assert r.status == 200
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5) as r:
                assert r.status == 200
        again = devstack("up")  # safe to run twice
        assert again.returncode == 0, again.stderr
        status = json.loads(devstack("status").stdout)
        pids = [v["pid"] for v in status.values() if isinstance(v, dict) and v.get("pid")]
        assert len(pids) == 9  # postgres, kafka, 3 APIs, 2 relays, 1 consumer, prometheus
        assert all(pid_alive(p) for p in pids)
        url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/targets"

        def scraped() -> set[tuple[str, str]]:
            with urllib.request.urlopen(url, timeout=5) as r:
                targets = json.load(r)["data"]["activeTargets"]
            return {(t["labels"]["job"], t["labels"]["instance"].rsplit(":", 1)[1]) for t in targets}

        deadline = time.monotonic() + 60  # target discovery runs a moment after the server is ready
        while not scraped() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scraped() == {
            ("order-api", str(ports["ORDER_PORT"])),
            ("goods-api", str(ports["GOODS_PORT"])),
            ("order-history-api", str(ports["ORDER_HISTORY_PORT"])),
            ("order-relay", str(ports["ORDER_RELAY_METRICS_PORT"])),
            ("goods-relay", str(ports["GOODS_RELAY_METRICS_PORT"])),
            ("order-history-consumer", str(ports["ORDER_HISTORY_METRICS_PORT"])),
        }

        down = devstack("down")
        assert down.returncode == 0, down.stderr
        assert [p for p in pids if pid_alive(p)] == []
        after = json.loads(devstack("status").stdout)
        assert after["postgres"]["running"] is False and after["kafka"]["running"] is False
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)
