"""HTTP entrypoint of the order service: the order resource (shared.command.api)."""

from __future__ import annotations

from fastapi import FastAPI

from order import repository
from order.repository import ORDER
from order.schemas import OrderCreate, OrderUpdate
from order.settings import Settings
from shared.command.api import Resource, create_command_app

RESOURCE = Resource(
    entity=ORDER,
    create_model=OrderCreate,
    update_model=OrderUpdate,
    form_fields={"userId": "user_id"},  # the original Go service's form/query field
    insert_many=repository.insert_many,
    create_item=lambda body: body.user_id,
    update_sql=repository.UPDATE,
    update_args=lambda body: (body.user_id,),
    create_summary="Create an order: JSON {user_id}, or form/query field userId",
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    return create_command_app(RESOURCE, settings or Settings(), serving=settings is None)
