"""HTTP entrypoint of order-history: one router for the order-history resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import Response

from order_history import queries
from order_history.schemas import HistoryPage, HistoryQuery, OrderHistoryDetail
from order_history.settings import Settings
from shared.events import MAX_ID
from shared.http.app import create_service_app, json_response, pool_of
from shared.http.errors import ERROR_RESPONSES
from shared.refusals import NotFound

router = APIRouter(prefix="/v1/order-history", tags=["order-history"])


@router.get(
    "",
    response_model=HistoryPage,
    responses=ERROR_RESPONSES,
    summary="Orders with more than `threshold` goods, by id, paged with limit/offset",
)
async def list_order_history(params: Annotated[HistoryQuery, Query()], request: Request) -> Response:
    async with pool_of(request).acquire() as conn:
        items = await queries.list_orders(conn, params.threshold, params.limit, params.offset)
    return json_response(HistoryPage(data=items))


@router.get("/{order_id}", response_model=OrderHistoryDetail, responses=ERROR_RESPONSES)
async def get_order_history(order_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request) -> Response:
    async with pool_of(request).acquire() as conn:
        detail = await queries.order_detail(conn, order_id)
    if detail is None:
        raise NotFound("order", order_id)
    return json_response(detail)


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
    )
