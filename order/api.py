"""HTTP entrypoint of the order service: one router for the order resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import Response

from order import service
from order.schemas import OrderCreate, OrderPublic, OrderUpdate
from order.settings import Settings
from shared.api import (
    ERROR_RESPONSES,
    body_doc,
    create_service_app,
    etag,
    json_response,
    parse_if_match,
    pool_of,
    read_fields,
    validate_fields,
    wake_relay,
)
from shared.events import MAX_ID

OrderId = Annotated[int, Path(ge=1, le=MAX_ID, description="order id")]
# Field names of the original Go service's form/query interface.
FORM_ALIASES = {"userId": "user_id"}

router = APIRouter(prefix="/v1/order", tags=["order"])


@router.post(
    "",
    status_code=201,
    response_model=OrderPublic,
    responses=ERROR_RESPONSES,
    openapi_extra=body_doc(OrderCreate, FORM_ALIASES),
    summary="Create an order: JSON {user_id}, or form/query field userId",
)
async def create_order(request: Request) -> Response:
    fields, source = await read_fields(request, FORM_ALIASES)
    body = validate_fields(OrderCreate, fields, source, FORM_ALIASES)
    order = await service.create_order(request.app.state.order_creator, body.user_id)
    wake_relay(request)
    return json_response(order, 201, {"Location": f"/v1/order/{order.id}", "ETag": etag(order.version)})


@router.get("/{order_id}", response_model=OrderPublic, responses=ERROR_RESPONSES)
async def get_order(order_id: OrderId, request: Request) -> Response:
    order = await service.get_order(pool_of(request), order_id)
    return json_response(order, 200, {"ETag": etag(order.version)})


@router.patch(
    "/{order_id}",
    response_model=OrderPublic,
    responses=ERROR_RESPONSES,
    openapi_extra=body_doc(OrderUpdate, FORM_ALIASES),
)
async def update_order(order_id: OrderId, request: Request) -> Response:
    expected = parse_if_match(request)
    fields, source = await read_fields(request, FORM_ALIASES)
    body = validate_fields(OrderUpdate, fields, source, FORM_ALIASES)
    order = await service.update_order(pool_of(request), order_id, body.user_id, expected)
    wake_relay(request)
    return json_response(order, 200, {"ETag": etag(order.version)})


@router.delete("/{order_id}", status_code=204, responses=ERROR_RESPONSES)
async def delete_order(order_id: OrderId, request: Request) -> Response:
    await service.delete_order(pool_of(request), order_id, parse_if_match(request))
    wake_relay(request)
    return Response(status_code=204)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    serving = settings is None
    settings = settings or Settings()
    return create_service_app(
        freeze_heap=serving,
        title="order service",
        database_url=settings.database_url,
        routers=[router],
        pool_size=settings.db_pool_size,
        outbox=True,
        state=lambda pool: {"order_creator": service.order_creator(pool)},
    )
