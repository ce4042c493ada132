"""`python -m order_history api|consumer|migrate|reset`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging

import asyncpg

from order_history.consumer import ConsumerConfig, HistoryConsumer
from order_history.settings import Settings
from shared.entrypoints import install_stop_signals, run_api, run_migrations
from shared.logs import configure_logging

log = logging.getLogger("order_history")


async def run_consumer(settings: Settings, instance: str) -> None:
    """Run the consumer until SIGTERM/SIGINT; restart it (from its stored positions) if it fails."""
    configure_logging(settings.log_level, settings.log_format)
    # A batch in flight keeps some 150,000 objects alive for about a second, and
    # with the default threshold (a collection every 700 allocations) the cycle
    # collector walks them again and again: decoding measured 14 µs per event
    # instead of 9. The consumer's objects are freed by reference counting (they
    # form no cycles), so collecting less often costs no memory.
    gc.set_threshold(100_000, 20, 100)
    config = ConsumerConfig(
        dsn=settings.database_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group=settings.consumer_group,
        max_records=settings.batch_max_records,
        apply_connections=settings.apply_connections,
        fetch_timeout_ms=settings.fetch_timeout_ms,
        session_timeout_ms=settings.session_timeout_ms,
        client_id=f"order-history-consumer-{instance}",
        topic_prefix=settings.kafka_topic_prefix,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    backoff = 0.5
    while not stop.is_set():
        consumer = HistoryConsumer(config)
        try:
            await consumer.start()
        except Exception as exc:  # Kafka or the database not up yet
            log.warning("consumer cannot start yet, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
            await consumer.stop()
            await _sleep_unless(stop, backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        log.info("consumer started", extra={"group": settings.consumer_group, "instance": instance})
        crashed = await _run_until_stop(consumer, stop)
        await consumer.stop()
        log.info("consumer stopped", extra={"events": consumer.total.events, "poison": consumer.total.poison})
        if crashed:
            # Nothing is lost: a new consumer resumes from the positions in the database.
            await _sleep_unless(stop, backoff)
            backoff = min(backoff * 2, 5.0)
        else:
            backoff = 0.5


async def _run_until_stop(consumer: HistoryConsumer, stop: asyncio.Event) -> bool:
    """Run the loop until asked to stop; True if it crashed instead."""
    task = asyncio.create_task(consumer.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    consumer.request_stop()
    if task in done:
        error = task.exception()
        if error is not None:
            log.error("consumer failed; restarting it", exc_info=error)
            return True
        return False
    try:
        await asyncio.wait_for(task, timeout=10)
    except TimeoutError:
        task.cancel()
    except Exception:  # failing while stopping: we stop anyway
        log.exception("consumer failed while stopping")
    return False


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def reset(settings: Settings) -> None:
    """Empty the read model and its positions: the consumer then rebuilds it from the topics."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("TRUNCATE orders, goods, consumer_positions, dead_letters")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m order_history")
    parser.add_argument("command", choices=["api", "consumer", "migrate", "reset"])
    parser.add_argument("--instance", default="0", help="consumer instance name (for logs and client id)")
    args = parser.parse_args()
    settings = Settings()
    if args.command == "api":
        run_api("order_history.api:create_app", settings.host, settings.port, settings.api_workers, settings)
    elif args.command == "consumer":
        asyncio.run(run_consumer(settings, args.instance))
    elif args.command == "migrate":
        asyncio.run(run_migrations("order_history", settings.database_url, settings))
    else:
        asyncio.run(reset(settings))


if __name__ == "__main__":
    main()
