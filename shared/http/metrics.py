"""The HTTP metrics of an API, and its `GET /metrics`, with prometheus-client.

`http_requests_total{method,route,status}` and the histogram
`http_request_duration_seconds{method,route}` are counted by `RequestMetrics`,
an ASGI middleware. `route` is the matched route's template
(`/v1/order/{order_id}`), never the raw path: requests that match no route
share the label `UNMATCHED`, and methods other than HTTP's usual ones share
`other`, so no client can grow the number of series.

With several uvicorn workers each worker counts in its own process:
`shared.entrypoints.run_api` then gives the workers one fresh
`PROMETHEUS_MULTIPROC_DIR`, prometheus-client's multiprocess mode writes every
worker's samples there, and `/metrics`, whichever worker answers it, adds
them up across workers (prometheus-client's `MultiProcessCollector`). With one
worker the process's own registry is read.

Gauges read from the database at scrape time (the command APIs' outbox
backlog) are given as `scrape_gauges`: computed anew for each scrape, never
stored in a worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "(unmatched)"
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS: Final = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
DURATION: Final = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class RequestMetrics:
    """Counts each HTTP request by method, route template and status, and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._templates: dict[Any, str] | None = None  # endpoint -> its route's path template
        # The labelled children, looked up once per label set: `labels()` checks and locks on
        # every call. Bounded like the label sets themselves (methods, routes, statuses).
        self._counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _route_of(self, scope: Scope) -> str:
        """The template of the route that served the request (also for a 405), or UNMATCHED.

        The router leaves the matched endpoint in the scope; its template comes
        from the app's routes, looked up once.
        """
        if self._templates is None:
            self._templates = {}
            for route in reversed(getattr(getattr(scope.get("app"), "router", None), "routes", [])):
                endpoint, path = getattr(route, "endpoint", None), getattr(route, "path", None)
                if endpoint is not None and path is not None:
                    self._templates[endpoint] = path
        return self._templates.get(scope.get("endpoint"), UNMATCHED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app fails before it starts a response

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = self._route_of(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (method, route, status)
            children = self._counted.get(key)
            if children is None:
                children = self._counted[key] = (
                    REQUESTS.labels(method, route, str(status)),
                    DURATION.labels(method, route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


ScrapeGauges = Callable[[Request], Awaitable[Iterable[tuple[str, str, float]]]]


class _Values(Collector):
    """Gauges of one scrape: (name, help, value) triples."""

    def __init__(self, gauges: Iterable[tuple[str, str, float]]) -> None:
        self.gauges = list(gauges)

    def collect(self) -> Iterable[Metric]:
        for name, help_text, value in self.gauges:
            yield GaugeMetricFamily(name, help_text, value=value)


def metrics_endpoint(scrape_gauges: ScrapeGauges | None = None) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: this API's counters (summed over its workers) and the gauges of `scrape_gauges`."""

    async def metrics(request: Request) -> Response:
        body = generate_latest(_registry())
        if scrape_gauges is not None:
            scraped = CollectorRegistry(auto_describe=False)
            scraped.register(_Values(await scrape_gauges(request)))
            body += generate_latest(scraped)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics


def _registry() -> Any:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY
