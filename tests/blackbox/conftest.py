"""The stack the black-box tests run against: the compose stack `make compose-test` started
(BLACKBOX_COMPOSE), or else a `make up`-style devstack stack of their own, started here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.blackbox.targets import DevstackTarget, Target, compose_target_from_env


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    compose = compose_target_from_env()
    if compose is not None:
        yield compose
        return
    devstack = DevstackTarget()
    try:
        devstack.up()
        yield devstack
    finally:
        devstack.close()
