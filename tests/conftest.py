from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack import sessions
from devstack.config import StackConfig
from devstack.errors import StackError
from devstack.processes import free_port
from devstack.stack import Stack
from tests.harness import Env, fresh_env


def _new_stack() -> Stack:
    state_dir = sessions.SESSIONS / f"test-{free_port()}"
    shutil.rmtree(state_dir, ignore_errors=True)
    sessions.claim(state_dir)
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
    sessions.clean_abandoned()  # stacks of sessions that died before their teardown
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
