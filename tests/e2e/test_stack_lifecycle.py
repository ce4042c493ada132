"""`make up` / `make down` (python -m devstack up|down): all up, then nothing of ours left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    }
    env = {**os.environ, "STACK_DIR": str(state_dir), **{k: str(v) for k, v in ports.items()}}

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
        assert len(pids) == 8  # postgres, kafka, 3 APIs, 2 relays, 1 consumer
        assert all(pid_alive(p) for p in pids)

        down = devstack("down")
        assert down.returncode == 0, down.stderr
        assert [p for p in pids if pid_alive(p)] == []
        after = json.loads(devstack("status").stdout)
        assert after["postgres"]["running"] is False and after["kafka"]["running"] is False
    finally:
        devstack("down")
        shutil.rmtree(state_dir, ignore_errors=True)
