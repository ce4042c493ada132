"""HTTP entrypoint of the goods service: the goods resource (shared.command.api)."""

from __future__ import annotations

from fastapi import FastAPI

from goods import repository
from goods.repository import GOODS
from goods.schemas import GoodsCreate, GoodsUpdate
from goods.settings import Settings
from shared.command.api import Resource, create_command_app

RESOURCE = Resource(
    entity=GOODS,
    create_model=GoodsCreate,
    update_model=GoodsUpdate,
    form_fields={"orderId": "order_id", "name": "name"},  # the original Go service's form/query fields
    insert_many=repository.insert_many,
    create_item=repository.create_item,
    update_sql=repository.UPDATE,
    update_args=repository.update_args,
    create_summary="Create goods: JSON {order_id, name?}, or form/query fields orderId and name",
    update_summary="Change order_id and/or name (a move changes both orders' counts); If-Match: compare-and-set",
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    return create_command_app(RESOURCE, settings or Settings(), serving=settings is None)
