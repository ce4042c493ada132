"""The stacks of test sessions: `.devstack/test-*`, each claimed by the process that made it.

Contract: `claim(state_dir)` makes the folder and records the calling process as its
owner (`owner.pid`). `clean_abandoned()` stops the processes of every test stack whose
owner has gone (or that names none) and deletes its folder; a stack whose owner still
runs is kept, whoever asks: `make clean` and a new test session both call it, and
neither may pull a stack from under a test that is running.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from devstack.config import StackConfig
from devstack.paths import REPO
from devstack.processes import pid_alive
from devstack.progress import say
from devstack.stack import Stack

SESSIONS = REPO / ".devstack"
OWNER_FILE = "owner.pid"


def claim(state_dir: Path) -> Path:
    """Make `state_dir` and record this process as its owner."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / OWNER_FILE).write_text(str(os.getpid()))
    return state_dir


def owner(state_dir: Path) -> int | None:
    """The PID of the live process that claimed `state_dir`, None when there is none."""
    try:
        pid = int((state_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def clean_abandoned(announce: bool = False, root: Path = SESSIONS) -> None:
    """Stop and delete every test stack under `root` whose owner has gone; keep the others."""
    for state_dir in sorted(root.glob("test-*")):
        pid = owner(state_dir)
        if pid is not None:
            if announce:
                say(f"keeping {state_dir}: its test session (pid {pid}) is running")
            continue
        Stack(StackConfig(state_dir=state_dir)).down()
        if announce:
            say(f"deleting {state_dir}")
        shutil.rmtree(state_dir, ignore_errors=True)
