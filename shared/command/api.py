"""The HTTP side of a command service: one router for its resource, its app, its `__main__`.

A `Resource` tells what is service-specific: the entity, the request models,
the original Go clients' form/query field names, and how a validated body
becomes a create item or update arguments. Every endpoint reads the Request
itself (fields, path id, If-Match), so FastAPI has nothing to validate: the
routes are also served directly as Starlette routes ahead of FastAPI's
(`direct`), which skips FastAPI's request handler, a third of a create's CPU
(docs/benchmarks.md, fourth round). FastAPI's routes stay, for the OpenAPI
document; `body_doc` and `_PATH_ID` describe there exactly what the endpoints
accept.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.routing import Route

from shared import asyncapi, consistency
from shared.batching import RunBatch
from shared.command import outbox, resync
from shared.command import service as command_service
from shared.command import status as command_status
from shared.database import UNAVAILABLE_ERRORS
from shared.entrypoints import at_least, run_api, run_migrations, run_relay
from shared.events import MAX_ID, MAX_VERSION, TOPIC_OF_TYPE
from shared.http.app import Direct, create_service_app, json_response, pool_of
from shared.http.errors import ERROR_RESPONSES
from shared.http.fields import IF_MATCH_PATTERN, etag, parse_if_match, path_id, read_fields, validate_fields
from shared.notify import Notifier
from shared.settings import CommandServiceSettings

C = TypeVar("C", bound=BaseModel)
U = TypeVar("U", bound=BaseModel)


@dataclass(frozen=True)
class Resource(Generic[C, U]):
    entity: command_service.Entity[Any]
    create_model: type[C]
    update_model: type[U]
    form_fields: Mapping[str, str]  # form/query name -> field (`userId` -> `user_id`), every form field
    insert_many: RunBatch[Any, Any]
    create_item: Callable[[C], Any]
    update_sql: str
    update_args: Callable[[U], Sequence[Any]]
    create_summary: str
    update_summary: str = "Change fields (version + 1); If-Match for compare-and-set"

    @property
    def id_param(self) -> str:
        return f"{self.entity.name}_id"


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def body_doc(resource: Resource[Any, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The requestBody of a write: the JSON model, and the same fields as a form (names of the original)."""
    schema = _schema_of(model)
    form_properties = {
        alias: {k: v for k, v in schema["properties"][name].items() if k not in ("anyOf", "default", "title")}
        | _form_type(schema["properties"][name])
        for alias, name in resource.form_fields.items()
    }
    # Other form fields are ignored (the original service's clients may send more).
    form: dict[str, Any] = {"type": "object", "properties": form_properties, "additionalProperties": True}
    required = [alias for alias, name in resource.form_fields.items() if name in schema.get("required", [])]
    if required:
        form["required"] = required
    if "minProperties" in schema:
        form["minProperties"] = schema["minProperties"]
    content = {"application/json": {"schema": schema}, "application/x-www-form-urlencoded": {"schema": form}}
    return {"requestBody": {"content": content, "required": True}}


def _form_type(prop: dict[str, Any]) -> dict[str, Any]:
    """A form field is never null: the non-null alternative of a nullable JSON field."""
    for alternative in prop.get("anyOf", ()):
        if alternative.get("type") != "null":
            return dict(alternative)
    return {}


def _parameters(resource: Resource[Any, Any], if_match: bool) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": resource.id_param,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        }
    ]
    if if_match:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": f'the version the change expects, as an ETag ("3"; 1 to {MAX_VERSION}, no leading '
                "zeros; the quotes may be left out): another version answers 412 and changes nothing. `*` or "
                "absent: any version. A weak tag (W/...) never matches: 412. Anything else: 400",
                "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
            }
        )
    return {"parameters": params}


def command_routes(resource: Resource[C, U]) -> tuple[APIRouter, list[Route]]:
    """FastAPI's router of the resource (for the OpenAPI document) and the same endpoints as direct routes."""
    entity = resource.entity
    form_fields = resource.form_fields
    base = f"/v1/{entity.name}"
    one = f"{base}/{{{resource.id_param}}}"

    async def create(request: Request) -> Response:
        fields, source = await read_fields(request, form_fields, request.app.state.accept_form_writes)
        body = validate_fields(resource.create_model, fields, source, form_fields)
        created = await command_service.create(entity, request.app.state.creator, resource.create_item(body))
        _wake_relay(request)
        headers = [
            (b"location", f"{base}/{created.id}".encode()),
            (b"etag", etag(created.version).encode()),
            (_TOKEN, consistency.token(entity.name, created.id, created.version).encode()),
        ]
        return json_response(created, 201, headers)

    async def read(request: Request) -> Response:
        found = await command_service.get(pool_of(request), entity, path_id(request, resource.id_param))
        return json_response(found, 200, [(b"etag", etag(found.version).encode())])

    async def change(request: Request) -> Response:
        entity_id = path_id(request, resource.id_param)
        expected = parse_if_match(request)
        fields, source = await read_fields(request, form_fields, request.app.state.accept_form_writes)
        body = validate_fields(resource.update_model, fields, source, form_fields)
        changed = await command_service.update(
            pool_of(request), entity, resource.update_sql, entity_id, resource.update_args(body), expected
        )
        _wake_relay(request)
        headers = [
            (b"etag", etag(changed.version).encode()),
            (_TOKEN, consistency.token(entity.name, changed.id, changed.version).encode()),
        ]
        return json_response(changed, 200, headers)

    async def remove(request: Request) -> Response:
        entity_id = path_id(request, resource.id_param)
        version = await command_service.delete(pool_of(request), entity, entity_id, parse_if_match(request))
        _wake_relay(request)
        return Response(
            status_code=204, headers={consistency.HEADER: consistency.token(entity.name, entity_id, version)}
        )

    router = APIRouter(tags=[entity.name])
    public = entity.public
    router.add_api_route(
        base,
        create,
        methods=["POST"],
        status_code=201,
        response_model=public,
        responses={**_without(404, 412), 201: _written("Created")},
        openapi_extra=body_doc(resource, resource.create_model),
        summary=resource.create_summary,
    )
    router.add_api_route(
        one,
        read,
        methods=["GET"],
        response_model=public,
        # A body over the limit is refused before any route reads it (shared/http/limits.py): 413 even here.
        responses=_without(412),
        openapi_extra=_parameters(resource, if_match=False),
        summary=f"The {entity.name} and its version (ETag)",
    )
    router.add_api_route(
        one,
        change,
        methods=["PATCH"],
        response_model=public,
        responses={**ERROR_RESPONSES, 200: _written("Changed")},
        openapi_extra=body_doc(resource, resource.update_model) | _parameters(resource, if_match=True),
        summary=resource.update_summary,
    )
    router.add_api_route(
        one,
        remove,
        methods=["DELETE"],
        status_code=204,
        responses={**ERROR_RESPONSES, 204: _written("Deleted")},
        openapi_extra=_parameters(resource, if_match=True),
        summary=f"Delete the {entity.name} (its event carries its last state)",
    )
    # One route per path, so that a method not served gets a 405 whose Allow lists all that are.
    by_method = {"GET": read, "HEAD": read, "PATCH": change, "DELETE": remove}

    async def one_entity(request: Request) -> Response:
        return await by_method[request.method](request)

    direct = [
        Route(base, Direct(create), methods=["POST"], include_in_schema=False),
        Route(one, Direct(one_entity), methods=["GET", "PATCH", "DELETE"], include_in_schema=False),
    ]
    return router, direct


# The header's name as a raw response header carries it (see `json_response`).
_TOKEN: Final = consistency.HEADER.lower().encode()


def _written(description: str) -> dict[str, Any]:
    """A write's 2xx response: it names the write in its Consistency-Token header."""
    return {"description": description, "headers": consistency.openapi_response_header()}


def _without(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: doc for status, doc in ERROR_RESPONSES.items() if status not in statuses}


def _wake_relay(request: Request) -> None:
    """After a command committed: let the outbox relay know (coalesced, asynchronous)."""
    notifier: Notifier | None = request.app.state.outbox_notifier
    if notifier is not None:
        notifier.poke()


async def outbox_gauges(request: Request) -> list[tuple[str, str, float]]:
    """The outbox backlog, read at scrape time; none while the database is unreachable."""
    try:
        async with pool_of(request).acquire() as conn:
            row = await conn.fetchrow(outbox.BACKLOG_SQL)
    except UNAVAILABLE_ERRORS:
        return []
    assert row is not None
    return [
        ("outbox_unpublished_events", "Outbox rows not yet published to Kafka", float(row["unpublished"])),
        (
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            float(row["oldest_age"] or 0.0),
        ),
    ]


def create_command_app(resource: Resource[Any, Any], settings: CommandServiceSettings, serving: bool) -> FastAPI:
    """The app of a command service; `serving`: a server process's (not a test's)."""
    router, direct = command_routes(resource)
    events = asyncapi.dumps(asyncapi.document([TOPIC_OF_TYPE[f"{resource.entity.name}.created"]]))

    async def asyncapi_document(_: Request) -> Response:
        return Response(events, media_type="application/json")

    direct = [*direct, Route("/asyncapi.json", asyncapi_document, methods=["GET"], include_in_schema=False)]
    return create_service_app(
        freeze_heap=serving,
        title=f"{resource.entity.name} service",
        database_url=settings.database_url,
        acquire_timeout=settings.db_acquire_timeout,
        routers=[router],
        direct_routes=direct,
        pool_size=settings.db_pool_size,
        outbox=True,
        scrape_gauges=outbox_gauges,
        state=lambda pool: {
            "creator": command_service.creator(pool, resource.insert_many),
            "accept_form_writes": settings.accept_form_writes,
        },
    )


def command_main(
    service: str,
    settings_type: type[CommandServiceSettings],
    entity: command_service.Entity[Any],
    argv: list[str] | None = None,
) -> None:
    """`<service> api|relay|migrate|status|resync`: the command-line entrypoint of a command service."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", default="0", help="instance name (shown in process lists and logs)")
    parser = argparse.ArgumentParser(prog=service, description=f"the {service} command service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("api", parents=[common], help="serve the HTTP API")
    commands.add_parser("relay", parents=[common], help="publish the outbox to Kafka")
    commands.add_parser("migrate", parents=[common], help="apply the database migrations")
    status = commands.add_parser("status", parents=[common], help="the outbox backlog and which relay leads")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    resync_parser = commands.add_parser(
        "resync",
        parents=[common],
        help=f"re-publish the current state of {service} entities through the outbox (safe while running)",
        description=f"Publish a snapshot ({service}.resynced) of each chosen {service} through the outbox: the "
        "read model then shows the command side's state, also over a row that claims the same version. "
        "An id that no longer exists is published as deleted; one the id sequence has not handed out yet is "
        "skipped, or with --remove-unassigned published as removed.",
    )
    which = resync_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", action="append", metavar="1,2,3", help="these ids (comma-separated, repeatable)")
    which.add_argument("--since", metavar="TIMESTAMP", help="those changed at or after this ISO 8601 time (zone)")
    which.add_argument("--all", action="store_true", help="every one")
    resync_parser.add_argument("--batch-size", type=at_least(1), default=1000, help="rows per transaction (1000)")
    resync_parser.add_argument(
        "--max-backlog",
        type=at_least(0),
        default=10000,
        help="wait while the outbox holds more unpublished events (10000)",
    )
    resync_parser.add_argument(
        "--stall-timeout",
        type=at_least(0.1, float),
        default=60.0,
        help="fail if the outbox stays over --max-backlog without shrinking this many seconds (60)",
    )
    resync_parser.add_argument(
        "--remove-unassigned",
        metavar="VERSION",
        help="with --ids: publish those the id sequence has not handed out yet as removed at VERSION (the "
        "version the read model holds for them), and start the entity the sequence later hands each one to "
        "at VERSION + 1 (what `order-history reconcile --repair` does)",
    )
    resync_parser.add_argument("--json", action="store_true", help="print JSON instead of the summary line")
    args = parser.parse_args(argv)
    settings = settings_type()
    if args.command == "resync":
        try:
            if args.remove_unassigned is not None and not args.ids:
                raise ValueError("--remove-unassigned needs --ids")
            selection = resync.Selection(
                ids=resync.parse_ids(args.ids) if args.ids else None,
                since=resync.parse_since(args.since) if args.since else None,
                remove_unassigned=(
                    None if args.remove_unassigned is None else resync.parse_removal_version(args.remove_unassigned)
                ),
            )
        except ValueError as exc:
            parser.error(str(exc))
        sys.exit(
            asyncio.run(
                resync.run(
                    service,
                    settings.database_url,
                    entity,
                    selection,
                    args.batch_size,
                    args.max_backlog,
                    args.stall_timeout,
                    args.json,
                )
            )
        )
    if args.command == "api":
        run_api(f"{service}.api:create_app", settings.host, settings.port, settings.api_workers, settings)
    elif args.command == "relay":
        sys.exit(asyncio.run(run_relay(service, settings)))
    elif args.command == "status":
        sys.exit(asyncio.run(command_status.status(service, settings, args.json)))
    else:
        asyncio.run(run_migrations(service, settings.owner_database_url, settings))
