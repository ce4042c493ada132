"""Process entrypoints shared by the services: API server, outbox relay, migrations, and command-line number types."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn

from shared.command.relay import OutboxRelay
from shared.events import MAX_ID  # PostgreSQL's bigint maximum, the type of ids and counts alike
from shared.http.metrics import MULTIPROC_ENV
from shared.kafka import KafkaRefused
from shared.logs import configure_logging, logging_config
from shared.metrics import serve as serve_metrics
from shared.migrations import migrate
from shared.settings import CommandServiceSettings, CommonSettings

log = logging.getLogger(__name__)

# Seconds a stopping process gives its main loop to finish what it is doing.
STOP_GRACE = 5.0


def run_api(factory: str, host: str, port: int, workers: int, settings: CommonSettings) -> None:
    """Serve `factory` with uvicorn: `workers` processes share the listening socket.

    With more than one worker, this process supervises them (and restarts one
    that dies); uvicorn applies `log_config` in each worker. The workers then
    count their metrics into one fresh directory, which `/metrics` adds up
    (`shared.http.metrics`); it is removed when the server stops.
    """
    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    metrics_dir = None
    if workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="order-history-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    else:
        os.environ.pop(MULTIPROC_ENV, None)
    try:
        _serve(factory, host, port, workers, log_config)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve(factory: str, host: str, port: int, workers: int, log_config: dict[str, Any]) -> None:
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def supervise(main: Coroutine[Any, Any, None], request_stop: Callable[[], None], what: str) -> int:
    """Run a background process's main loop until SIGTERM/SIGINT; the process's exit status.

    0 after a requested stop. If the loop ends by itself it has died (it waits
    out every outage it knows of): the error is logged and the status is 1, so
    that a supervisor restarts the process instead of it living on idle. A loop
    that does not finish within STOP_GRACE of a stop is cancelled.
    """
    stop = asyncio.Event()
    install_stop_signals(stop)
    task = asyncio.create_task(main)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        error = task.exception()
        if isinstance(error, KafkaRefused):  # a setting to fix, not a bug: its message says which
            log.critical(f"{what} stopped: {error}")
            return 1
        log.critical(f"{what} main loop ended on its own; exiting with status 1", exc_info=error)
        return 1
    request_stop()
    try:
        await asyncio.wait_for(task, timeout=STOP_GRACE)
    except TimeoutError:
        log.warning(f"{what} did not stop within {STOP_GRACE:.0f}s; cancelled")
    except Exception:
        log.exception(f"{what} failed while stopping")
    return 0


async def run_relay(name: str, settings: CommandServiceSettings) -> int:
    configure_logging(settings.log_level, settings.log_format)
    relay = OutboxRelay(settings, name=name)
    log.info("outbox relay starting", extra={"relay": name})
    serve_metrics(settings.host, settings.relay_metrics_port, f"{name} relay")
    try:
        status = await supervise(relay.run(), relay.stop, "outbox relay")
    finally:
        await relay.close()
    log.info("outbox relay stopped", extra={"relay": name, "published": relay.published})
    return status


async def run_migrations(service: str, database_url: str, settings: CommonSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    applied = await migrate(database_url, service)
    log.info("migrations up to date", extra={"service": service, "applied_now": applied})


def at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse `type`: a finite number of `kind` from `minimum` to PostgreSQL's bigint maximum
    (else a usage error naming it): every such number is stored or compared somewhere."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value > MAX_ID:
            raise argparse.ArgumentTypeError(f"out of range: {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse
