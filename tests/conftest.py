from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack.processes import free_port
from devstack.stack import REPO, Stack, StackConfig
from tests.harness import Env, new_prefix, truncate_all


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """A fresh PostgreSQL and Kafka on free ports, started by devstack, migrated."""
    state_dir = REPO / ".devstack" / f"test-{free_port()}"
    shutil.rmtree(state_dir, ignore_errors=True)
    config = StackConfig(
        state_dir=state_dir,
        pg_port=free_port(),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        order_port=free_port(),
        goods_port=free_port(),
        history_port=free_port(),
        fast_pg=True,
    )
    stack = Stack(config)
    try:
        stack.start_infrastructure()
        stack.migrate()
        yield stack
    finally:
        stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
async def env(stack: Stack) -> AsyncIterator[Env]:
    """Clean databases and this test's own topics."""
    env = Env(stack=stack, prefix=new_prefix())
    await truncate_all(env)
    await env.create_topics()
    try:
        yield env
    finally:
        await env.close()
