"""HTTP entrypoint of the goods service: one router for the goods resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import Response

from goods import service
from goods.schemas import GoodsCreate, GoodsPublic, GoodsUpdate
from goods.settings import Settings
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

GoodsId = Annotated[int, Path(ge=1, le=MAX_ID, description="goods id")]
# Field names of the original Go service's form/query interface.
FORM_ALIASES = {"orderId": "order_id"}

router = APIRouter(prefix="/v1/goods", tags=["goods"])


@router.post(
    "",
    status_code=201,
    response_model=GoodsPublic,
    responses=ERROR_RESPONSES,
    openapi_extra=body_doc(GoodsCreate, {**FORM_ALIASES, "name": "name"}),
    summary="Create goods: JSON {order_id, name?}, or form/query fields orderId and name",
)
async def create_goods(request: Request) -> Response:
    fields, source = await read_fields(request, FORM_ALIASES)
    body = validate_fields(GoodsCreate, fields, source, FORM_ALIASES)
    goods = await service.create_goods(request.app.state.goods_creator, body.order_id, body.name)
    wake_relay(request)
    return json_response(goods, 201, {"Location": f"/v1/goods/{goods.id}", "ETag": etag(goods.version)})


@router.get("/{goods_id}", response_model=GoodsPublic, responses=ERROR_RESPONSES)
async def get_goods(goods_id: GoodsId, request: Request) -> Response:
    goods = await service.get_goods(pool_of(request), goods_id)
    return json_response(goods, 200, {"ETag": etag(goods.version)})


@router.patch(
    "/{goods_id}",
    response_model=GoodsPublic,
    responses=ERROR_RESPONSES,
    openapi_extra=body_doc(GoodsUpdate, {**FORM_ALIASES, "name": "name"}),
    summary="Change order_id and/or name (moving goods changes both orders' counts)",
)
async def update_goods(goods_id: GoodsId, request: Request) -> Response:
    expected = parse_if_match(request)
    fields, source = await read_fields(request, FORM_ALIASES)
    body = validate_fields(GoodsUpdate, fields, source, FORM_ALIASES)
    order_id = body.order_id if "order_id" in body.model_fields_set else None
    set_name = "name" in body.model_fields_set
    goods = await service.update_goods(pool_of(request), goods_id, order_id, set_name, body.name, expected)
    wake_relay(request)
    return json_response(goods, 200, {"ETag": etag(goods.version)})


@router.delete("/{goods_id}", status_code=204, responses=ERROR_RESPONSES)
async def delete_goods(goods_id: GoodsId, request: Request) -> Response:
    await service.delete_goods(pool_of(request), goods_id, parse_if_match(request))
    wake_relay(request)
    return Response(status_code=204)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    serving = settings is None
    settings = settings or Settings()
    return create_service_app(
        freeze_heap=serving,
        title="goods service",
        database_url=settings.database_url,
        routers=[router],
        pool_size=settings.db_pool_size,
        outbox=True,
        state=lambda pool: {"goods_creator": service.goods_creator(pool)},
    )
