"""HTTP entrypoint of order-history: one router for the order-history resource.

Every read waits for what it asks before it queries (`read_conditions`): the
writes its Consistency-Token names (order_history/api/consistency.py), and the
bound of `Prefer: max-staleness` (order_history/api/freshness.py); its answer says
how current the read model was when the query began (Read-Model-Watermark,
Read-Model-Staleness).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from order_history.api import cursors, freshness, queries
from order_history.api.consistency import ReadModelWatch
from order_history.api.freshness import FreshnessWatch, TooStale, TooStaleBody
from order_history.api.schemas import GOODS_LIMIT, MAX_GOODS_LIMIT, HistoryPage, HistoryQuery, OrderHistoryDetail
from order_history.settings import DEV_CURSOR_KEY, Settings
from shared import consistency
from shared.events import MAX_ID
from shared.http.app import RawHeaders, create_service_app, json_response, pool_of
from shared.http.errors import ERROR_RESPONSES, ApiError, ErrorBody, NotYetConsistent, NotYetConsistentBody
from shared.refusals import NotFound

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/order-history", tags=["order-history"])


# The reads' answers: 200 (and the detail's 404) say how current they are; 412 when the Consistency-Token
# writes are not reflected in time; 413 for a body over the limit, which is refused before any route reads
# it (shared/http/limits.py); 503 when the read model is staler than `Prefer: max-staleness` allows in time.
_RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
_DETAIL_RESPONSES = {
    **{status: doc for status, doc in ERROR_RESPONSES.items() if status != 412},
    200: {"headers": {**freshness.openapi_headers(), **freshness.openapi_applied_header()}},
    404: {
        **ERROR_RESPONSES[404],
        "description": "no such order in the read model (as current as its headers say)",
        "headers": {**freshness.openapi_headers(required=False), **freshness.openapi_applied_header()},
    },
    412: {
        "model": NotYetConsistentBody,
        "description": "the read model does not reflect the writes named by Consistency-Token within the wait "
        "(Retry-After: 1)",
        "headers": _RETRY_AFTER,
    },
    503: {
        "model": TooStaleBody,
        "description": f"the read model is staler than `Prefer: {freshness.PREFERENCE}` allows within the wait "
        "(error `too_stale`, with `staleness_ms` and `max_staleness_ms`, and the freshness headers), or the "
        "database is not reachable (error `unavailable`); retry after Retry-After seconds",
        "headers": {**_RETRY_AFTER, **freshness.openapi_headers(required=False)},
    },
}
# The list names no id: it has no 404. Its 422 also answers a cursor of the documented shape that
# this service did not make for this query: a schema cannot tell a signed cursor from another.
_LIST_RESPONSES = {
    **{status: doc for status, doc in _DETAIL_RESPONSES.items() if status != 404},
    422: {
        "model": ErrorBody,
        "description": "a parameter is missing, of the wrong type or out of range; or `cursor` is not one this "
        "service made for this query (filters, threshold and sort), or comes with `offset`",
    },
}
_WAITING = {"parameters": freshness.openapi_parameters()}


@router.get(
    "",
    response_model=HistoryPage,
    responses=_LIST_RESPONSES,
    openapi_extra=_WAITING,
    summary="Orders with more than `threshold` goods, filtered by user and creation time, by id or newest first, "
    "paged by cursor (or offset)",
)
async def list_order_history(params: Annotated[HistoryQuery, Query()], request: Request) -> Response:
    listing: Listing = request.app.state.listing
    query = listing.query_of(params)
    headers = await read_conditions(request)
    async with pool_of(request).acquire() as conn:
        items, next_cursor = await queries.list_page(conn, query, listing.cursor_key, listing.skew)
    return json_response(HistoryPage(data=items, next_cursor=next_cursor), headers=headers)


@router.get(
    "/{order_id}",
    response_model=OrderHistoryDetail,
    responses=_DETAIL_RESPONSES,
    openapi_extra=_WAITING,
    summary="One order, its goods count, and a page of its goods by id (the next page by `goods_after`)",
)
async def get_order_history(
    order_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    request: Request,
    goods_limit: Annotated[int, Query(ge=1, le=MAX_GOODS_LIMIT, description="most goods in `goods`")] = GOODS_LIMIT,
    goods_after: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="`goods_next` of the previous page: the goods with a greater id"),
    ] = None,
) -> Response:
    headers = await read_conditions(request)
    async with pool_of(request).acquire() as conn:
        detail = await queries.order_detail(conn, order_id, goods_limit, goods_after or 0)
    if detail is None:
        return _not_found(NotFound("order", order_id), headers)
    return json_response(detail, headers=headers)


def _not_found(exc: NotFound, headers: RawHeaders) -> Response:
    """The 404 the error handlers would give, with the freshness headers: an order not found may be one
    the read model has not heard of yet, and they say how current it is."""
    message = str(exc)
    response = JSONResponse(
        status_code=404,
        content={"error": "not_found", "message": message, "fields": [{"field": "id", "message": message}]},
    )
    response.raw_headers.extend(headers)
    return response


@dataclass(frozen=True)
class Listing:
    """What the list endpoint takes from the settings."""

    cursor_key: bytes
    skew: dt.timedelta

    def query_of(self, params: HistoryQuery) -> queries.ListQuery:
        """The list query a request asks for; 422 naming `cursor` for a cursor that is not this query's."""
        query = queries.ListQuery(
            threshold=params.threshold,
            limit=params.limit,
            offset=params.offset,
            user_id=params.user_id,
            created_from=_in_utc(params.created_from),
            created_to=_in_utc(params.created_to),
            newest_first=params.sort == "-created_at",
        )
        if params.cursor is None:
            return query
        if params.offset:
            raise ApiError(422, "cursor_with_offset", "give either cursor or offset, not both", "cursor")
        try:
            after = cursors.decode(self.cursor_key, query.fingerprint(), params.cursor)
        except cursors.BadCursor as exc:
            raise ApiError(422, "invalid_cursor", f"cursor {exc}", "cursor") from None
        return replace(query, after=after)


def _listing(settings: Settings) -> Listing:
    """The list's settings, at startup; a warning if anyone could sign its cursors."""
    key = settings.cursor_key.get_secret_value()
    if key == DEV_CURSOR_KEY:
        log.warning(
            "cursors are signed with the public development key, so anyone can forge them: "
            "set ORDER_HISTORY_CURSOR_KEY to a secret of your own, the same on every API instance"
        )
    return Listing(cursor_key=key.encode(), skew=dt.timedelta(seconds=settings.created_at_skew))


def _in_utc(at: dt.datetime | None) -> dt.datetime | None:
    """A time in UTC. One that falls outside the years 1..9999 in UTC (9999-12-31T23:00:00-05:00, say) is
    clamped to the nearest end: no order is created beyond them, so the page is the same."""
    if at is None:
        return None
    try:
        return at.astimezone(dt.UTC)
    except OverflowError:
        offset = at.utcoffset() or dt.timedelta(0)
        return (dt.datetime.max if offset < dt.timedelta(0) else dt.datetime.min).replace(tzinfo=dt.UTC)


async def read_conditions(request: Request) -> RawHeaders:
    """Wait for what the read asks, then the freshness headers of its answer (judged now, as its query
    begins). Consistency-Token: until the read model reflects those writes, or 400, 412. `Prefer:
    max-staleness`: until it is that fresh, or 503. Both share one wait (`Prefer: wait`)."""
    prefer = request.headers.get("Prefer")
    token = request.headers.get(consistency.HEADER)
    bound = freshness.max_staleness_of(prefer)
    watch: FreshnessWatch = request.app.state.freshness
    if token is None and bound is None:
        return (await watch.current()).headers(time.time())
    wait = consistency.wait_of(prefer)
    deadline = time.monotonic() + wait
    reflected = None
    if token is not None:
        await reflect_tokens(request, token, wait)
        reflected = time.monotonic()  # the headers then say at least as much as the tokens waited for
    if bound is None:
        return (await watch.after(reflected)).headers(time.time())
    found, fresh = await watch.fresh(bound, max(0.0, deadline - time.monotonic()), after=reflected)
    now = time.time()
    if not fresh:
        raise TooStale(found.staleness_ms(now), bound, wait, found.headers(now))
    return found.headers(now, applied=bound)


async def reflect_tokens(request: Request, header: str, wait: float) -> None:
    """Return once the read model reflects the writes of Consistency-Token `header`, waiting up to `wait`
    seconds, or refuse (400, 412)."""
    try:
        tokens = consistency.parse(header)
    except consistency.MalformedToken as exc:
        raise ApiError(400, "malformed_consistency_token", str(exc), consistency.HEADER) from None
    watch: ReadModelWatch = request.app.state.watch
    left = await watch.wait(tokens, wait)
    if left:
        raise NotYetConsistent(left)


async def _too_stale(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TooStale)
    content = {
        "error": "too_stale",
        "message": str(exc),
        "fields": [{"field": "Prefer", "message": exc.short}],
        "staleness_ms": exc.staleness_ms,
        "max_staleness_ms": exc.bound_ms,
    }
    response = JSONResponse(status_code=503, content=content, headers={"Retry-After": "1"})
    response.raw_headers.extend(exc.headers)
    return response


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's app; without `settings` (as uvicorn calls it), a server process's, set from the environment."""
    serving = settings is None
    settings = settings or Settings()
    app = create_service_app(
        freeze_heap=serving,
        title="order-history service",
        database_url=settings.query_database_url,
        acquire_timeout=settings.db_acquire_timeout,
        routers=[router],
        pool_size=settings.db_pool_size,
        session_settings=queries.SESSION_SETTINGS,
        state=lambda pool: {
            "watch": ReadModelWatch(pool, settings.query_database_url),
            "freshness": FreshnessWatch(pool, settings.consumer_group, settings.kafka_topic_prefix),
            "listing": _listing(settings),
        },
    )
    app.add_exception_handler(TooStale, _too_stale)
    return app
