"""Test stacks are removed once their session has gone, never while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack import sessions


def test_a_stack_is_kept_while_its_owner_runs_and_removed_once_it_has_gone(tmp_path: Path) -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        live = tmp_path / "test-live"
        live.mkdir()
        (live / sessions.OWNER_FILE).write_text(str(running.pid))
        dead = tmp_path / "test-dead"
        dead.mkdir()
        (dead / sessions.OWNER_FILE).write_text(ended.stdout.strip())
        unclaimed = tmp_path / "test-unclaimed"
        unclaimed.mkdir()
        other = tmp_path / "not-a-test-stack"
        other.mkdir()

        sessions.clean_abandoned(root=tmp_path)

        assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-test-stack", "test-live"]
        assert sessions.owner(live) == running.pid
    finally:
        running.kill()
        running.wait()
    sessions.clean_abandoned(root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-test-stack"]


def test_claim_names_this_process(tmp_path: Path) -> None:
    state_dir = sessions.claim(tmp_path / "test-mine")
    assert sessions.owner(state_dir) == os.getpid()
