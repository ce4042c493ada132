"""The `/metrics` port of a background process (a relay, the consumer).

prometheus-client's own HTTP server, in a thread, serving the process's
default registry: whatever the process counts there. A port that cannot be
bound stops the process at start with the error (never a silent process with
no metrics).
"""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve(host: str, port: int, what: str) -> None:
    """Serve `/metrics` on host:port (0: no metrics port)."""
    if port == 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics served", extra={"served_for": what, "address": f"http://{host}:{port}/metrics"})
