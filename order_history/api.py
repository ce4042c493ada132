"""HTTP entrypoint of order-history: one router for the order-history resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import Response

from order_history import queries
from order_history.consistency import ReadModelWatch
from order_history.schemas import HistoryPage, HistoryQuery, OrderHistoryDetail
from order_history.settings import Settings
from shared import consistency
from shared.events import MAX_ID
from shared.http.app import create_service_app, json_response, pool_of
from shared.http.errors import ERROR_RESPONSES, ApiError, NotYetConsistent, NotYetConsistentBody
from shared.refusals import NotFound

router = APIRouter(prefix="/v1/order-history", tags=["order-history"])


# The reads' errors: 412 when the Consistency-Token writes are not reflected in time.
_RESPONSES = {
    **{status: doc for status, doc in ERROR_RESPONSES.items() if status not in (412, 413)},
    412: {
        "model": NotYetConsistentBody,
        "description": "the read model does not reflect the writes named by Consistency-Token within the wait "
        "(Retry-After: 1)",
    },
}
_WAITING = {"parameters": consistency.openapi_parameters()}


@router.get(
    "",
    response_model=HistoryPage,
    responses=_RESPONSES,
    openapi_extra=_WAITING,
    summary="Orders with more than `threshold` goods, by id, paged with limit/offset",
)
async def list_order_history(params: Annotated[HistoryQuery, Query()], request: Request) -> Response:
    await reflect_tokens(request)
    async with pool_of(request).acquire() as conn:
        items = await queries.list_orders(conn, params.threshold, params.limit, params.offset)
    return json_response(HistoryPage(data=items))


@router.get("/{order_id}", response_model=OrderHistoryDetail, responses=_RESPONSES, openapi_extra=_WAITING)
async def get_order_history(order_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request) -> Response:
    await reflect_tokens(request)
    async with pool_of(request).acquire() as conn:
        detail = await queries.order_detail(conn, order_id)
    if detail is None:
        raise NotFound("order", order_id)
    return json_response(detail)


async def reflect_tokens(request: Request) -> None:
    """With Consistency-Token: return once the read model reflects those writes, or refuse (400, 412)."""
    header = request.headers.get(consistency.HEADER)
    if header is None:
        return
    try:
        tokens = consistency.parse(header)
    except consistency.MalformedToken as exc:
        raise ApiError(400, "malformed_consistency_token", str(exc), consistency.HEADER) from None
    watch: ReadModelWatch = request.app.state.watch
    left = await watch.wait(tokens, consistency.wait_of(request.headers.get("Prefer")))
    if left:
        raise NotYetConsistent(left)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    serving = settings is None
    settings = settings or Settings()
    return create_service_app(
        freeze_heap=serving,
        title="order-history service",
        database_url=settings.query_database_url,
        acquire_timeout=settings.db_acquire_timeout,
        routers=[router],
        pool_size=settings.db_pool_size,
        session_settings=queries.SESSION_SETTINGS,
        state=lambda pool: {"watch": ReadModelWatch(pool, settings.query_database_url)},
    )
