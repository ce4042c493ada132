"""`order-history api|consumer|migrate|reset|reset-positions|status` (also `python -m order_history ...`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from order_history import operations
from order_history import status as read_side_status
from order_history.runner import HistoryConsumer
from order_history.settings import Settings
from shared.backoff import Backoff
from shared.entrypoints import run_api, run_migrations, supervise
from shared.logs import configure_logging
from shared.metrics import serve as serve_metrics

log = logging.getLogger("order_history")


async def run_consumer(settings: Settings, instance: str) -> int:
    """Run the consumer until SIGTERM/SIGINT; the process's exit status (1: its loop died)."""
    configure_logging(settings.log_level, settings.log_format)
    # A batch in flight keeps some 150,000 objects alive for about a second, and
    # with the default threshold (a collection every 700 allocations) the cycle
    # collector walks them again and again (docs/benchmarks.md, third round). The
    # consumer's objects are freed by reference counting (they form no cycles),
    # so collecting less often costs no memory.
    gc.set_threshold(100_000, 20, 100)
    consumer = HistoryConsumer(settings, instance)
    serve_metrics(settings.host, settings.metrics_port, "order-history consumer")

    async def start_then_run() -> None:
        backoff = Backoff(0.5, 5.0, stop=consumer.stop_event)
        while True:
            try:
                await consumer.start()
                break
            except Exception as exc:  # Kafka or the database not up yet
                log.warning("consumer cannot start yet, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                await consumer.close()
                await backoff.wait()
                if consumer.stopping:
                    return
        log.info("consumer started", extra={"group": settings.consumer_group, "instance": instance})
        await consumer.run()

    try:
        status = await supervise(start_then_run(), consumer.request_stop, "order-history consumer")
    finally:
        await consumer.stop()
    log.info("consumer stopped", extra={"events": consumer.total.events, "poison": consumer.total.poison})
    return status


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--instance", default="0", help="instance name (for logs and the Kafka client id)")
    parser = argparse.ArgumentParser(prog="order-history", description="the order-history read side")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("api", parents=[common], help="serve the order-history HTTP API")
    commands.add_parser("consumer", parents=[common], help="apply the event topics to the read model")
    commands.add_parser("migrate", parents=[common], help="apply the database migrations")
    commands.add_parser(
        "reset", parents=[common], help="empty the read model and its positions (consumers stopped): it is rebuilt"
    )
    reset_positions = commands.add_parser(
        "reset-positions",
        parents=[common],
        help="set the stored positions of a topic (consumers stopped), after the topic was recreated",
        description="Set the consumer group's stored positions of TOPIC's partitions to the log's start or end. "
        "For a topic that was deleted and created again: --to start applies its new messages. The consumers "
        "must be stopped.",
    )
    status = commands.add_parser(
        "status", parents=[common], help="positions, log ends and lag per partition, freshness, dead letters"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reset_positions.add_argument("topic", help="the topic as the contract names it: order.events or goods.events")
    reset_positions.add_argument("--to", choices=["start", "end"], required=True, help="the log's start or end")
    reset_positions.add_argument("--partition", type=int, action="append", help="only this partition (repeatable)")
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "api":
        run_api("order_history.api:create_app", settings.host, settings.port, settings.api_workers, settings)
    elif args.command == "consumer":
        sys.exit(asyncio.run(run_consumer(settings, args.instance)))
    elif args.command == "migrate":
        asyncio.run(run_migrations("order_history", settings.owner_database_url, settings))
    elif args.command == "reset":
        sys.exit(asyncio.run(operations.reset(settings)))
    elif args.command == "status":
        sys.exit(asyncio.run(read_side_status.status(settings, args.json)))
    else:
        sys.exit(asyncio.run(operations.reset_positions(settings, args.topic, args.to, args.partition)))


if __name__ == "__main__":
    main()
