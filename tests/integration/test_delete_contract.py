"""DELETE and If-Match behave the same for orders and goods: one test per rule, run for both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.harness import Env
from tests.integration import test_goods_api as goods
from tests.integration import test_order_api as order
from tests.integration.test_order_api import (
    BAD_IF_MATCH,
    BAD_PATH_IDS,
    MAX_ID,
    SUPERSCRIPT_IF_MATCH,
    Bad,
    check_refusals,
)


@dataclass(frozen=True)
class Resource:
    service: str
    path: str
    create: Callable[[httpx.AsyncClient], Awaitable[dict[str, Any]]]
    patch: dict[str, Any]  # a valid PATCH body


RESOURCES = [
    pytest.param(Resource("order", "/v1/order", order.create, {"user_id": 8}), id="order"),
    pytest.param(Resource("goods", "/v1/goods", goods.create, {"name": "x"}), id="goods"),
]


@pytest.mark.parametrize("res", RESOURCES)
async def test_delete_if_match(env: Env, res: Resource) -> None:
    async with env.client(res.service) as client:
        created = await res.create(client)
        url = f"{res.path}/{created['id']}"
        patched = (await client.patch(url, json=res.patch)).json()

        stale = [Bad(f"stale If-Match {v}", ("if-match",), {"headers": {"If-Match": v}}) for v in ('"1"', '"3"')]
        await check_refusals(env, client, "DELETE", url, stale, service=res.service)
        assert (await client.get(url)).json() == patched

        resp = await client.delete(url, headers={"If-Match": '"2"'})
        assert resp.status_code == 204, resp.text
        assert (await client.get(url)).status_code == 404


@pytest.mark.parametrize("res", RESOURCES)
async def test_delete_refusals(env: Env, res: Resource) -> None:
    async with env.client(res.service) as client:
        created = await res.create(client)
        url = f"{res.path}/{created['id']}"

        async def refused(target: str, cases: list[Bad]) -> None:
            await check_refusals(env, client, "DELETE", target, cases, service=res.service)

        await refused(f"{res.path}/{created['id'] + 1}", [Bad("unknown id", ("id",))])
        await refused(f"{res.path}/{MAX_ID}", [Bad("unknown max id", ("id",))])
        for bad in BAD_PATH_IDS:
            await refused(f"{res.path}/{bad}", [Bad(f"path {bad}", ("id",))])
        await refused(url, [Bad(f"If-Match {v!r}", ("if-match",), {"headers": {"If-Match": v}}) for v in BAD_IF_MATCH])
        assert (await client.get(url)).json() == created


@pytest.mark.parametrize("res", RESOURCES)
async def test_if_match_superscript_digit_is_refused_not_500(env: Env, res: Resource) -> None:
    """shared/api.py parse_if_match: "\\xb2".isdigit() is True but int("\\xb2") raises ValueError."""
    async with env.client(res.service) as client:
        created = await res.create(client)
        url = f"{res.path}/{created['id']}"
        patch = [
            Bad(f"If-Match {v!r}", ("if-match",), {"json": res.patch, "headers": {"If-Match": v}})
            for v in SUPERSCRIPT_IF_MATCH
        ]
        delete = [Bad(f"If-Match {v!r}", ("if-match",), {"headers": {"If-Match": v}}) for v in SUPERSCRIPT_IF_MATCH]
        problems = []
        for method, cases in (("PATCH", patch), ("DELETE", delete)):
            try:
                await check_refusals(env, client, method, url, cases, service=res.service)
            except AssertionError as exc:
                problems.append(str(exc).split("\nassert")[0])
        assert not problems, "\n".join(problems)
        assert (await client.get(url)).json() == created
