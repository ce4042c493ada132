from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack.config import StackConfig
from devstack.errors import StackError
from devstack.paths import REPO
from devstack.processes import free_port, pid_alive
from devstack.stack import Stack
from tests.harness import Env, fresh_env


def _stop_abandoned_test_stacks() -> None:
    """Stacks of earlier test sessions that died before their teardown (by their PID files)."""
    for state_dir in (REPO / ".devstack").glob("test-*"):
        owner = state_dir / "owner.pid"
        try:
            owner_pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner_pid):
            continue
        Stack(StackConfig(state_dir=state_dir)).down()
        shutil.rmtree(state_dir, ignore_errors=True)


def _new_stack() -> Stack:
    state_dir = REPO / ".devstack" / f"test-{free_port()}"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    (state_dir / "owner.pid").write_text(str(os.getpid()))
    return Stack(
        StackConfig(
            state_dir=state_dir,
            pg_port=free_port(),
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            kafka_sasl_ports=((free_port(), free_port()),),  # SASL_PLAINTEXT and SASL_SSL (test_kafka_security)
            order_port=free_port(),
            goods_port=free_port(),
            history_port=free_port(),
            # No metrics ports unless a test asks for one (several consumers run at once).
            order_relay_metrics_port=0,
            goods_relay_metrics_port=0,
            consumer_metrics_port=0,
            fast_pg=True,
        )
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """A fresh PostgreSQL and Kafka on free ports, started by devstack, migrated."""
    _stop_abandoned_test_stacks()
    attempts = 2  # a port picked as free can be taken by someone else before the server binds it
    for attempt in range(1, attempts + 1):
        stack = _new_stack()
        try:
            stack.start_infrastructure()
            stack.migrate()
            break
        except StackError as exc:
            stack.down()
            shutil.rmtree(stack.config.state_dir, ignore_errors=True)
            if attempt == attempts:
                raise
            print(f"test stack did not start ({exc}); retrying on other ports", file=sys.stderr)
    try:
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.config.state_dir, ignore_errors=True)
        if stack.postgres.relocated_to is not None:
            shutil.rmtree(stack.postgres.relocated_to, ignore_errors=True)


@pytest.fixture
async def env(stack: Stack) -> AsyncIterator[Env]:
    """Clean databases and this test's own topics."""
    async with fresh_env(stack) as env:
        yield env
