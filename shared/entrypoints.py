"""Process entrypoints shared by the services: API server, outbox relay, migrations."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import signal

import uvicorn

from shared.logs import configure_logging, logging_config
from shared.migrations import migrate
from shared.outbox import OutboxRelay, RelayConfig
from shared.settings import CommandServiceSettings, CommonSettings

log = logging.getLogger(__name__)


def run_api(factory: str, host: str, port: int, workers: int, settings: CommonSettings) -> None:
    """Serve `factory` with uvicorn: `workers` processes share the listening socket.

    With more than one worker, this process supervises them (and restarts one
    that dies); uvicorn applies `log_config` in each worker.
    """
    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
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


async def run_relay(name: str, settings: CommandServiceSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    relay = OutboxRelay(
        RelayConfig(
            dsn=settings.database_url,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval,
            retention_seconds=settings.outbox_retention_seconds,
            topic_prefix=settings.kafka_topic_prefix,
        ),
        name=name,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    log.info("outbox relay starting", extra={"relay": name})
    task = asyncio.create_task(relay.run())
    await stop.wait()
    relay.stop()
    try:
        await asyncio.wait_for(task, timeout=10)
    except TimeoutError:
        task.cancel()
    await relay.close()
    log.info("outbox relay stopped", extra={"relay": name, "published": relay.published})


async def run_migrations(service: str, database_url: str, settings: CommonSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    applied = await migrate(database_url, service)
    log.info("migrations up to date", extra={"service": service, "applied_now": applied})
